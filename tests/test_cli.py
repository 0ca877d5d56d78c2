"""The command line: one module per command in convnext/cli/, the same flag spelled the same in every command,
and the commands that have no test of their own elsewhere (info, bench)."""
from __future__ import annotations

import argparse
import importlib
import json

import pytest

from convnext.cli import COMMANDS, main


def _flags(command: str) -> dict[str, argparse.Action]:
    p = argparse.ArgumentParser()
    importlib.import_module(f"convnext.cli.{command}").add_arguments(p)
    return {s: a for a in p._actions for s in a.option_strings}


def test_one_spelling_per_option():
    flags = {c: _flags(c) for c in COMMANDS}
    every = set().union(*flags.values())
    for retired in ("--dtype", "--weights", "--which", "--init-key", "--out-json"):
        assert retired not in every, retired
    # an option several commands share means the same there: same choices, and --json always takes a path
    for flag in ("--precision", "--json", "--device", "--ema", "--checkpoint", "--pretrained", "--img-size"):
        users = [c for c in COMMANDS if flag in flags[c]]
        assert users, flag
        choices = {tuple(flags[c][flag].choices or ()) for c in users}
        nargs = {flags[c][flag].nargs for c in users}
        assert len(choices) == 1 and len(nargs) == 1, (flag, users)
    assert {c for c in COMMANDS if "--precision" in flags[c]} == {"bench", "eval"}  # train: train.precision=


def test_info(capsys):
    assert main(["info", "convnext_tiny"]) == 0
    out = capsys.readouterr().out
    assert "28,589,128" in out and "GMACs at 224px: 4.46" in out and "stage 3: (768, 7, 7)" in out
    assert main(["info", "convnext_tiny", "--img-size", "100"]) == 2
    assert "not divisible by 32" in capsys.readouterr().err


def test_bench_against_timm_writes_its_provenance(tmp_path, capsys):
    js = tmp_path / "b.json"
    args = ["bench", "convnext_atto", "--img-size", "32", "--batch-size", "2", "--runs", "2", "--iters", "1",
            "--warmup", "1", "--compare", "timm", "--threads", "1", "--json", str(js)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "precision=fp32" in out and "memory_format=contiguous" in out and "ratio ours/timm" in out
    r = json.loads(js.read_text())
    assert len(r["runs"]["ours"]) == len(r["runs"]["timm"]) == 2 and r["ratios"]["ours/timm"] > 0
    assert r["setting"]["precision"] == "fp32" and r["git_commit"] and r["versions"]["torch"]
    assert main(["bench", "convnext_atto", "--train", "--fold"]) == 2
    assert "--fold is for inference" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "usage: convnext" in capsys.readouterr().out
