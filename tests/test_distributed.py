"""Meta-training under torchrun: ranks sharing each task batch end with the weights one process reaches,
unequal shares weigh in exactly, and a meta-batch too small to share is refused."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import Tensor

from app.checkpoint import load_card, load_weights
from app.meta import MAML, InnerLoop, Learner
from app.meta.distributed import Ranks, share
from app.meta.tasks.sinusoid import sinusoid_tasks
from app.training import TrainSpec, train
from tests.conftest import meta_params, relative_error, write_dataset

METASERVE = str(Path(sys.executable).with_name("metaserve"))
SINGLE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}
SINUSOID = TrainSpec(meta_batch=5, iterations=6, val_tasks=5, checkpoint_every=3)
two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl needs a CUDA device per rank")


def torchrun(ranks: int, spec: TrainSpec, out: Path, *options: str) -> None:
    """``metaserve train`` on ``ranks`` local processes started by torchrun, as docs/operating.md shows it."""
    command = shlex.split(spec.command(out))[1:]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}"]
    done = subprocess.run(
        [*launcher, "--no-python", METASERVE, *command, *options],
        env=SINGLE_THREAD,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved ") == 1, done.stdout  # rank 0 alone reports


def shaping(weights: dict[str, Tensor]) -> list[Tensor]:
    """The tensors that shape the net's outputs: not the conv biases that per-task batch norm cancels,
    whose meta-gradient is zero up to rounding noise that Adam's normalized steps make full-sized."""
    conv_biases = {k[: -len("weight")] + "bias" for k, v in weights.items() if v.dim() == 4}
    return [v for k, v in weights.items() if k not in conv_biases]


def assert_same_run(one: Path, two: Path) -> None:
    expected, found = load_weights(one), load_weights(two)
    assert found.keys() == expected.keys()
    assert relative_error(shaping(found), shaping(expected)) < 1e-5
    assert load_card(two)["training"]["world_size"] == 2
    assert load_card(one)["training"]["world_size"] == 1


def test_shares_cover_the_batch_and_weighted_by_size_give_its_mean_meta_gradient(
    sinusoid_learner: Learner, generator: torch.Generator
) -> None:
    batch = sinusoid_tasks(generator, tasks=7)
    maml = MAML(InnerLoop(1, 0.01))
    params = meta_params(maml, sinusoid_learner)
    shares = [share(batch, Ranks(rank, 3)) for rank in range(3)]
    assert [s.tasks for s in shares] == [2, 2, 3]
    assert torch.equal(torch.cat([s.query_x for s in shares]), batch.query_x)
    parts = [maml.meta_gradients(sinusoid_learner, params, s) for s in shares]
    weights = [s.tasks / batch.tasks for s in shares]
    expected, loss = maml.meta_gradients(sinusoid_learner, params, batch)
    found = [sum(w * g[k] for (g, _), w in zip(parts, weights, strict=True)) for k in params]
    assert relative_error(found, list(expected.values())) < 1e-6
    mean_loss = sum(w * part_loss for (_, part_loss), w in zip(parts, weights, strict=True))
    assert float(mean_loss) == pytest.approx(float(loss), rel=1e-6)


def test_a_meta_batch_smaller_than_the_world_is_refused(generator: torch.Generator) -> None:
    with pytest.raises(ValueError, match="1 tasks cannot be shared by 2 ranks"):
        share(sinusoid_tasks(generator, tasks=1), Ranks(1, 2))


def test_two_gloo_ranks_resume_and_end_where_one_process_does(tmp_path: Path) -> None:
    """MAML on 5 tasks (shares of 2 and 3) for 3 iterations, then resumed on both ranks to 6."""
    train(SINUSOID, tmp_path / "one", "one", device="cpu")
    torchrun(2, replace(SINUSOID, iterations=3), tmp_path / "two", "--device", "cpu")
    torchrun(2, SINUSOID, tmp_path / "two", "--device", "cpu", "--resume")
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert load_card(tmp_path / "two")["training"]["iteration"] == 6


def test_two_gloo_ranks_train_anil_on_images_as_one_process_does(tmp_path: Path) -> None:
    """ANIL's Conv4 with per-task batch norm, task by task on a CPU."""
    classes = [f"alphabet{a}/character{c}" for a in range(10) for c in range(3)]
    data = write_dataset(tmp_path / "images", classes, per_class=3)
    spec = TrainSpec(family="folder", data=str(data), algorithm="anil", ways=3, shots=1, queries=2,
                     hidden=8, meta_batch=3, iterations=4, inner_lr=0.4, val_tasks=3)  # fmt: skip
    train(spec, tmp_path / "one", "one", device="cpu")
    torchrun(2, spec, tmp_path / "two", "--device", "cpu")
    assert_same_run(tmp_path / "one", tmp_path / "two")


@two_gpus
def test_two_nccl_ranks_end_where_one_gpu_does(tmp_path: Path) -> None:
    train(SINUSOID, tmp_path / "one", "one", device="cuda")
    torchrun(2, SINUSOID, tmp_path / "two", "--device", "cuda")
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert load_card(tmp_path / "two")["training"]["device"] == "cuda:0"
