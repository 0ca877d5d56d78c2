"""The roadmap's table (Tables 10 / 11) with the paper's numbers beside ours, a Figure-2-style chart, and training
every step with the project's trainer (`convnext roadmap`, convnext/cli/roadmap.py).

"our GFLOPs" are multiply-adds of convs and linears at 224 (convnext.benchmark.count_gmacs, meta device), the
quantity the paper calls FLOPs. A measured top-1 is read from `<out>/<step name>/summary.json` ("best_top1"),
blank where that run has not finished.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

from convnext.benchmark import count_gmacs, count_params
from convnext.config import apply_overrides, load_config
from convnext.errors import UserError
from convnext.roadmap import REFERENCE, Step, get_step, steps
from convnext.train import train

TABLE = {"resnet50": "Table 10", "resnet200": "Table 11"}
ENDPOINT = {"resnet50": "ResNet-50 -> ConvNeXt-T", "resnet200": "ResNet-200 -> ConvNeXt-B"}


@functools.lru_cache(maxsize=None)
def measure(regime: str, name: str) -> tuple[float, int]:
    """(GMACs at 224, parameters) of one step, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        # eval mode: the same MACs; a training-mode BN is decomposed by the counter, 3x slower
        model = get_step(regime, name).build().eval()
    return count_gmacs(model, 224), count_params(model)


def table(regime: str, measured: dict[str, float] | None = None) -> list[dict]:
    """One dict per step: the paper's numbers, ours, and a measured top-1 (None where there is none yet)."""
    measured = measured or {}
    rows = []
    for s in steps(regime):
        gmacs, params = measure(regime, s.name)
        rows.append({
            "label": s.label, "name": s.name, "change": s.change, "adopted": s.adopted, "recipe": s.recipe,
            "paper_top1": s.paper_top1, "paper_gflops": s.paper_gflops, "our_gflops": round(gmacs, 4),
            "params": params, "measured_top1": measured.get(s.name), "note": s.note,
        })
    return rows


def to_json(regime: str, rows: list[dict]) -> dict:
    """The table as a JSON document: the paper's numbers, ours and the measured ones per step."""
    return {
        "regime": regime,
        "paper": TABLE[regime],
        "img_size": 224,
        "gflops": "multiply-adds of convs and linears at 224x224 (convnext.benchmark.count_gmacs)",
        "reference": dict(zip(("name", "top1", "gflops"), REFERENCE[regime])),
        "steps": rows,
    }


def format_table(regime: str, rows: list[dict]) -> str:
    head = ["#", "step", "paper top-1", "paper GFLOPs", "our GFLOPs", "params (M)", "measured", "change"]
    body, notes = [], []
    for r in rows:
        ours = f"{r['our_gflops']:.2f}"
        if r["note"]:  # a printed number our count does not reproduce: mark it, explain below the table
            mark = "†‡§¶"[len(notes)]
            notes.append(f"{mark} {r['name']}: {r['note']}")
            ours += mark
        measured = "" if r["measured_top1"] is None else f"{r['measured_top1']:.2f}"
        change = r["change"] if r["adopted"] else f"(side branch) {r['change']}"
        body.append([r["label"], r["name"], f"{r['paper_top1']:.2f}", f"{r['paper_gflops']:.2f}", ours,
                     f"{r['params'] / 1e6:.2f}", measured, change])
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head) - 1)]
    lines = [f"{ENDPOINT[regime]}: the modernization roadmap (paper §2, {TABLE[regime]}); "
             "GFLOPs = multiply-adds of convs and linears at 224"]
    for row in [head, *body]:
        lines.append("  ".join(c.rjust(w) if 2 <= i <= 6 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     + "  " + row[-1])
    name, top1, gflops = REFERENCE[regime]
    lines.append(f"reference: {name} {top1:.2f} top-1, {gflops:.2f} GFLOPs")
    lines += notes
    return "\n".join(lines)


def plot(regime: str, rows: list[dict], path: str) -> None:
    """Figure 2 of the paper: a horizontal bar of top-1 per step, top to bottom, GFLOPs at the bar's end."""
    import matplotlib  # heavy (~0.3 s), and only the chart needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    fig, ax = plt.subplots(figsize=(8, 0.36 * n + 1.4))
    ys = list(range(n))[::-1]  # the first step at the top
    top1 = [r["paper_top1"] for r in rows]
    colors = ["#5b7fb5" if r["adopted"] else "#c8c8c8" for r in rows]  # side branches in grey, as in Figure 2
    lo = min(top1 + [r["measured_top1"] for r in rows if r["measured_top1"] is not None]) - 1.0
    ax.barh(ys, [t - lo for t in top1], left=lo, color=colors, height=0.7)
    for y, r in zip(ys, rows):
        ax.text(r["paper_top1"] + 0.05, y, f"{r['paper_top1']:.2f}  {r['our_gflops']:.2f}G", va="center", fontsize=8)
        if r["measured_top1"] is not None:
            ax.plot(r["measured_top1"], y, "kD", markersize=4)
    ref_name, ref_top1, ref_gflops = REFERENCE[regime]
    ax.axvline(ref_top1, color="#e07b39", linestyle="--", linewidth=1)
    ax.text(ref_top1 - 0.05, n - 0.3, f"{ref_name} {ref_top1:.2f} ({ref_gflops:.2f}G)", color="#e07b39", fontsize=8,
            ha="right")
    ax.set_yticks(ys, [f"{r['label']}  {r['name']}" for r in rows], fontsize=8)
    ax.set_xlim(lo, max(top1 + [ref_top1]) + 1.2)
    ax.set_ylim(-0.6, n + 0.2)
    measured = " (diamonds: measured)" if any(r["measured_top1"] is not None for r in rows) else ""
    ax.set_xlabel(f"ImageNet-1K top-1 (%), paper {TABLE[regime]}{measured}; labels: top-1, our GFLOPs")
    ax.set_title(f"Modernizing a ConvNet: {ENDPOINT[regime]}")
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")
    plt.close(fig)


def read_measured(regime: str, out: str) -> dict[str, float]:
    """best_top1 of each finished step run, from <out>/<step name>/summary.json."""
    if not Path(out).is_dir():
        raise UserError(f"--out {out} is not a directory; give the roadmap's run directory")
    measured = {}
    for s in steps(regime):
        summary = Path(out) / s.name / "summary.json"
        if not summary.is_file():
            continue
        try:
            top1 = json.loads(summary.read_text())["best_top1"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{summary} is not a finished run's summary (no readable 'best_top1'): {e}") from None
        if top1 is not None:
            measured[s.name] = float(top1)
    return measured


# ------------------------------------------------------------------------------------------------------------
# Training mode: every step with the project's trainer, one run directory per step (<out>/<step name>/).
# ------------------------------------------------------------------------------------------------------------


def train_steps(regime: str, data: str, out: str | Path, config: str | None = None, names: list[str] | None = None,
                overrides: list[str] = ()) -> None:
    """Train every step of `regime` in order (side branches included), or the steps `names`, each into
    <out>/<step name>/, on `data` (an ImageNet-layout folder, or "fashion_mnist")."""
    chosen = [get_step(regime, n) for n in names] if names else steps(regime)  # unknown name: a UserError
    for step in chosen:
        train_step(step, data, Path(out) / step.name, config, overrides)


def train_step(step: Step, data: str, out: Path, config: str | None = None, overrides: list[str] = ()) -> None:
    """Train one step into `out` with the project's trainer; a finished step is skipped, a started one resumed."""
    if (out / "summary.json").is_file():
        print(f"{step.name}: already trained ({out / 'summary.json'})", flush=True)
        return
    fmnist = data == "fashion_mnist"
    cfg = load_config(config or ("roadmap:fashion_mnist" if fmnist else "roadmap:imagenet"))
    source = ["data.dataset=fashion_mnist"] if fmnist else ["data.dataset=imagefolder", f"data.root={data}"]
    # the step's own stochastic depth unless the recipe turns it off (the small run does: drop_path 0)
    drop = [f"model.drop_path={step.drop_path}"] if cfg.model.drop_path > 0 else []
    cfg = apply_overrides(cfg, [f"model.name=roadmap/{step.regime}/{step.name}", *drop, *source, *overrides])
    print(f"--- {step.label} {step.name}: {step.change}", flush=True)
    train(cfg, out, resume=(out / "last.pt").is_file())
