"""The tasks the engine trains, by the name a config gives (`Config.task`): what `convnext train` runs.

    from convnext.config import load_config
    from convnext.tasks import train
    train(load_config("coco:mask_rcnn_tiny"), "runs/mrcnn")     # = convnext train --config coco:mask_rcnn_tiny
"""
from __future__ import annotations

from pathlib import Path

from convnext import engine
from convnext.config import TASKS, Config
from convnext.detection.task import Detection
from convnext.errors import UserError
from convnext.fcmae_task import FCMAEPretraining
from convnext.segmentation.task import Segmentation
from convnext.train import Classification


def get_task(name: str) -> engine.Task:
    """A new task object for `name` (one of convnext.config.TASKS)."""
    tasks = {"classification": Classification, "detection": Detection, "segmentation": Segmentation,
             "fcmae": FCMAEPretraining}
    assert set(tasks) == set(TASKS)
    if name not in tasks:
        raise UserError(f"unknown task {name!r}; the tasks are {', '.join(TASKS)}")
    return tasks[name]()


def train(cfg: Config, out: str | Path, resume: bool = False, device: str | None = None, on_step=None) -> dict:
    """Train `cfg.task` under `cfg` into the run directory `out` (engine.train); returns the summary."""
    return engine.train(get_task(cfg.task), cfg, out, resume=resume, device=device, on_step=on_step)
