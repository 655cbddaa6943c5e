"""``metaserve train`` and ``eval`` end to end: short runs on every family lower held-out loss, a killed
run resumes to the uninterrupted result, eval prints both baselines, and bad input exits with a reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from app.checkpoint import load_card, load_weights
from app.cli import app
from tests.conftest import write_dataset

METASERVE = str(Path(sys.executable).with_name("metaserve"))
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


def metaserve(*args: str | Path) -> str:
    """Run the CLI in this process; returns its output and fails the test on a non-zero exit."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def refused(*args: str | Path) -> str:
    """Run the CLI expecting a user error: exit code 2 and a one-line reason, no traceback."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    return result.output


def clusters_npz(path: Path, classes: int = 60, per_class: int = 10, features: int = 16) -> Path:
    """A classification dataset of Gaussian clusters with string labels."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(classes, features)) * 2
    x = (centres[:, None] + rng.normal(size=(classes, per_class, features))).reshape(-1, features)
    y = np.repeat([f"class-{c}" for c in range(classes)], per_class)
    np.savez(path, x=x.astype(np.float32), y=y)
    return path


def family_options(family: str, tmp_path: Path, glyphs_cache: Path) -> list[str]:
    if family == "sinusoid":
        return ["--family", "sinusoid", "--meta-batch", "10", "--iterations", "150", "--shots", "10"]
    common = [
        "--shots",
        "1",
        "--queries",
        "3",
        "--meta-batch",
        "4",
        "--inner-steps",
        "3",
        "--inner-lr",
        "0.4",
    ]
    if family == "glyphs":
        return ["--family", "glyphs", "--algo", "anil", "--hidden", "16", "--iterations", "40",
                "--outer-lr", "0.003", "--cache-dir", str(glyphs_cache), *common]  # fmt: skip
    if family == "folder":
        classes = [f"alphabet{a}/character{c}" for a in range(10) for c in range(3)]
        root = write_dataset(tmp_path / "omniglot", classes, per_class=6)
        return ["--family", "folder", "--data", str(root), "--ways", "3", "--algo", "anil", "--hidden", "16",
                "--iterations", "40", "--outer-lr", "0.003", *common]  # fmt: skip
    data = clusters_npz(tmp_path / "clusters.npz")
    return ["--family", "arrays", "--data", str(data), "--algo", "maml", "--iterations", "60",
            "--hidden", "32", "--outer-lr", "0.003", *common]  # fmt: skip


@pytest.mark.parametrize("family", ["sinusoid", "glyphs", "folder", "arrays"])
def test_a_short_run_on_each_family_lowers_held_out_loss(
    tmp_path: Path, glyphs_cache: Path, family: str
) -> None:
    out = tmp_path / "model"
    options = family_options(family, tmp_path, glyphs_cache)
    metaserve("train", *options, "--val-tasks", "60", "--val-every", "1000", "--out", out)
    card = load_card(out)
    first, last = card["training"]["history"][0], card["training"]["history"][-1]
    assert first["iteration"] == 0 and last["iteration"] == card["training"]["spec"]["iterations"]
    assert last["val_loss"] < 0.9 * first["val_loss"], card["training"]["history"]
    assert card["training"]["complete"] and card["command"].startswith("metaserve train")
    assert len(load_weights(out, card)) > 0


def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path: Path) -> None:
    options = ["train", "--family", "sinusoid", "--algo", "metasgd", "--iterations", "3000",
               "--checkpoint-every", "100", "--val-every", "1000", "--val-tasks", "20"]  # fmt: skip
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    run = subprocess.Popen(
        [METASERVE, *options, "--out", str(killed)], env=SINGLE_THREAD, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while not (killed / "card.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait()
    interrupted_at = load_card(killed)["training"]["iteration"]
    assert interrupted_at < 3000, "the run must be killed before it ends"

    subprocess.run([METASERVE, *options, "--resume", "--out", str(killed)], env=SINGLE_THREAD, check=True)
    subprocess.run([METASERVE, *options, "--out", str(whole)], env=SINGLE_THREAD, check=True)
    resumed, uninterrupted = load_weights(killed, load_card(killed)), load_weights(whole, load_card(whole))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    assert load_card(killed)["command"] == load_card(whole)["command"].replace(str(whole), str(killed))


def test_eval_prints_the_model_beside_both_baselines_and_records_them(
    tmp_path: Path, glyphs_cache: Path
) -> None:
    out = tmp_path / "glyphs"
    metaserve("train", *family_options("glyphs", tmp_path, glyphs_cache), "--val-tasks", "20", "--out", out)
    printed = metaserve("eval", "--model", out, "--shots", "1", "--tasks", "50", "--record",
                        "--cache-dir", glyphs_cache)  # fmt: skip
    for method in ("metaserve", "random init", "pixel nearest-neighbour"):
        assert method in printed
    figures = load_card(out)["metrics"]["test/5-way/1-shot/3-step"]
    assert figures["protocol"]["tasks"] == 50
    assert 0.2 < figures["pixel nearest-neighbour"]["accuracy"]["mean"] < 1
    assert figures["metaserve"]["accuracy"]["mean"] > figures["random init"]["accuracy"]["mean"]


def test_bad_input_exits_with_a_reason(tmp_path: Path) -> None:
    assert "needs a dataset path" in refused("train", "--family", "folder", "--out", tmp_path / "m")
    assert "algorithm must be one of" in refused("train", "--algo", "mamal", "--out", tmp_path / "m")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x=np.zeros((9, 2)), y=np.array([{"a": 1}] * 9, dtype=object))
    assert "pickled" in refused("train", "--family", "arrays", "--data", pickled, "--out", tmp_path / "m")
    data = clusters_npz(tmp_path / "few.npz", classes=12)
    assert "50-way" in refused(
        "train", "--family", "arrays", "--data", data, "--ways", "50", "--out", tmp_path / "m"
    )
    assert "no model card" in refused("eval", "--model", tmp_path / "nothing")

    out = tmp_path / "short"
    metaserve("train", "--iterations", "5", "--val-tasks", "5", "--out", out)
    assert "--resume needs the spec" in refused(
        "train", "--iterations", "9", "--shots", "5", "--resume", "--out", out
    )
    assert "tasks must be >= 1" in refused("eval", "--model", out, "--tasks", "0")
    card = json.loads((out / "card.json").read_text())
    del card["sha256"]
    (out / "card.json").write_text(json.dumps(card))
    assert "sha256" in refused("eval", "--model", out)
