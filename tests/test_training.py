"""Meta-training lowers held-out loss; evaluation reports a mean with its 95% interval; a training run
reports each iteration before it checkpoints it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.checkpoint import load_card
from app.meta import MAML, InnerLoop, Learner, evaluate, meta_train
from app.meta.tasks.noise_images import noise_image_tasks
from app.meta.tasks.sinusoid import sinusoid_tasks
from app.meta.train import Progress
from app.training import TrainSpec, Validation, train


def held_out(seed: int, batches: int, sample):  # type: ignore[no-untyped-def]
    generator = torch.Generator().manual_seed(seed)
    return [sample(generator) for _ in range(batches)]


def test_short_meta_training_on_sinusoids_lowers_held_out_loss(sinusoid_learner: Learner) -> None:
    inner = InnerLoop(1, 0.01)
    params = dict(sinusoid_learner.net.named_parameters())
    tasks = held_out(1234, 4, lambda g: sinusoid_tasks(g, 50))
    before = evaluate(sinusoid_learner, params, inner, tasks)["loss"]
    losses: list[float] = []
    trained = meta_train(
        MAML(inner),
        sinusoid_learner,
        params,
        lambda g: sinusoid_tasks(g, 10),
        iterations=600,
        outer_lr=3e-3,
        seed=0,
        on_iteration=lambda progress: losses.append(progress.loss),
    )
    after = evaluate(sinusoid_learner, trained, inner, tasks)["loss"]
    assert len(losses) == 600 and after.tasks == 200
    assert after.mean + after.ci95 < 0.5 * (before.mean - before.ci95), (before, after)


def test_evaluation_of_classification_reports_accuracy_with_interval(conv4_learner: Learner) -> None:
    batches = held_out(7, 2, lambda g: noise_image_tasks(g, 4, ways=5, shots=1, queries=2))
    found = evaluate(conv4_learner, dict(conv4_learner.net.named_parameters()), InnerLoop(1, 0.4), batches)
    assert set(found) == {"loss", "accuracy"}
    assert found["accuracy"].tasks == 8 and 0.0 <= found["accuracy"].mean <= 1.0
    assert found["accuracy"].ci95 >= 0.0


def test_meta_training_is_reproducible_from_its_seed(sinusoid_learner: Learner) -> None:
    params = dict(sinusoid_learner.net.named_parameters())
    runs = [
        meta_train(
            MAML(InnerLoop(1, 0.01)),
            sinusoid_learner,
            params,
            lambda g: sinusoid_tasks(g, 5),
            iterations=5,
            seed=3,
        )
        for _ in range(2)
    ]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in params)


def test_a_diverging_run_stops_before_a_non_finite_step_reaches_the_weights(
    sinusoid_learner: Learner,
) -> None:
    params = dict(sinusoid_learner.net.named_parameters())
    seen: list[dict[str, torch.Tensor]] = []
    with pytest.raises(FloatingPointError, match="diverged at iteration"):
        meta_train(
            MAML(InnerLoop(3, 1e4)),
            sinusoid_learner,
            params,
            lambda g: sinusoid_tasks(g, 5),
            iterations=20,
            on_iteration=lambda progress: seen.append(dict(progress.params)),
        )
    assert all(bool(torch.isfinite(t).all()) for step in seen for t in step.values())


def test_a_run_reports_each_iteration_before_its_checkpoint_is_written(tmp_path: Path) -> None:
    """A job records its validation points from the report: one reported after the checkpoint would be lost
    to a worker killed between the two, since the resumed run starts after that checkpoint."""
    out, seen = tmp_path / "run", []

    def on_progress(progress: Progress, validation: Validation | None) -> None:
        on_disk = load_card(out)["training"]["iteration"] if (out / "card.json").is_file() else 0
        seen.append((progress.iteration, validation is not None, on_disk))

    spec = TrainSpec(meta_batch=2, iterations=6, val_every=2, val_tasks=2, checkpoint_every=3)
    train(spec, out, "order", cache_dir=tmp_path / "cache", on_progress=on_progress)
    assert seen == [(i, i % 2 == 0, 3 * ((i - 1) // 3)) for i in range(1, 7)]
    assert load_card(out)["training"]["iteration"] == 6
