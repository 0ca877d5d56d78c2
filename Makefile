# The README's commands. Each one does all set-up on a fresh machine first.
#   make demo   -- the main job on the embedded default
#   make test   -- the test suite (what CI runs, via .ci/run)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch comes from this machine's local wheels (pip is capped at these); override elsewhere.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup demo demo-detection demo-segmentation test bench clean

setup: $(VENV)/.installed $(FMNIST)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST (the embedded demo data set) is Debian's package dataset-fashion-mnist.
$(FMNIST):
	@if [ "$$(id -u)" = 0 ]; then apt-get install -y -q dataset-fashion-mnist >/dev/null || \
	    (apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null); \
	else sudo apt-get install -y -q dataset-fashion-mnist; fi

demo: setup
	$(BIN)/convnext train --config demo --out runs/demo

# the offline detection demo (RESULTS.md): the classifier above starts the detector's backbone; two processes of one
# thread each (torchrun, gloo) train faster on 2 cores than one process of two threads
demo-detection: setup
	test -f runs/demo/best_ema.pt || $(BIN)/convnext train --config demo --out runs/demo
	test -f data/scenes/annotations/instances_val2017.json || $(BIN)/convnext data scenes --out data/scenes
	$(BIN)/torchrun --standalone --nproc_per_node=2 -m convnext train --config scenes --data data/scenes --out runs/scenes

# the offline segmentation demo (RESULTS.md): UperNet on the same scenes' per-pixel labels (data/scenes/ade), its
# backbone from the detection demo's
demo-segmentation: setup
	test -f runs/demo/best_ema.pt || $(BIN)/convnext train --config demo --out runs/demo
	test -f data/scenes/ade/classes.txt || $(BIN)/convnext data scenes --out data/scenes
	test -f runs/scenes/last.pt || $(BIN)/torchrun --standalone --nproc_per_node=2 -m convnext train --config scenes \
		--data data/scenes --out runs/scenes
	$(BIN)/torchrun --standalone --nproc_per_node=2 -m convnext train --config scenes_seg --data data/scenes/ade \
		--out runs/scenes_seg

test: setup
	$(BIN)/python -m pytest -q -m "not gpu"

bench: setup
	$(BIN)/convnext bench convnext_tiny --batch-size 16 --compare timm --json benchmarks/results/cpu_tiny_eager.json
	$(BIN)/convnext bench convnext_tiny --batch-size 16 --channels-last --compare timm --json benchmarks/results/cpu_tiny_cl.json

clean:
	rm -rf $(VENV) *.egg-info
