"""Checkpoints round-trip bit-exactly, carry a complete card, and refuse corrupt or mismatched files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.checkpoint import (
    CARD,
    PENDING,
    TRAINING_STATE,
    WEIGHTS,
    CheckpointError,
    load_card,
    load_training_state,
    load_weights,
    recover_checkpoint,
    save_card,
    save_checkpoint,
    save_training_state,
    save_weights,
)
from app.meta import InnerLoop, Learner, build_algorithm

MODELS = Path(__file__).resolve().parents[1] / "models"


def card_with(sha256: str) -> dict[str, object]:
    """The shipped sinusoid's card, renamed and pointing at other weights."""
    shipped: dict[str, object] = json.loads((MODELS / "sinusoid" / "card.json").read_text())
    return {**shipped, "name": "m", "sha256": sha256}


def test_weights_with_learned_rates_round_trip_bit_exactly(tmp_path: Path, sinusoid_learner: Learner) -> None:
    metasgd = build_algorithm("metasgd", InnerLoop(1, 0.01))
    params = metasgd.init(dict(sinusoid_learner.net.named_parameters()))
    params = {k: v.detach() + torch.randn_like(v) * 1e-3 for k, v in params.items()}
    digest = save_weights(tmp_path, params)
    save_card(tmp_path, card_with(digest))
    loaded = load_weights(tmp_path, load_card(tmp_path))
    assert loaded.keys() == params.keys()
    assert all(torch.equal(loaded[k], params[k]) for k in params)
    assert not list(tmp_path.glob(".*partial")), "no temporary file may remain"


def test_weights_that_do_not_match_the_cards_sha256_are_refused(tmp_path: Path) -> None:
    digest = save_weights(tmp_path, {"w": torch.ones(3)})
    save_card(tmp_path, card_with(digest))
    save_weights(tmp_path, {"w": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_weights(tmp_path, load_card(tmp_path))


def test_a_truncated_weights_file_is_reported_not_crashed_on(tmp_path: Path) -> None:
    save_weights(tmp_path, {"w": torch.ones(1000)})
    path = tmp_path / "weights.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_weights(tmp_path)


def test_a_card_missing_fields_names_them(tmp_path: Path) -> None:
    (tmp_path / "card.json").write_text(json.dumps({"name": "m", "version": 1}))
    with pytest.raises(CheckpointError, match=r"lacks the fields \['algorithm'"):
        load_card(tmp_path)
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_card(tmp_path)
    with pytest.raises(CheckpointError, match="lacks"):
        save_card(tmp_path, {"name": "m"})


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "../escape", "name must be 1 to 64 letters"),
        ("name", "m@2", "name must be"),
        ("version", "1", "version must be an integer >= 1; got '1'"),
        ("version", True, "version must be"),
        ("net", ["mlp"], "net must be an object"),
        ("family", {"kind": "ranking"}, "family must be an object whose 'kind' is one of"),
        ("inner", {"steps": 0, "lr": 0.01, "adapts": "all"}, "inner must be"),
        ("inner", {"steps": 1, "lr": float("nan"), "adapts": "all"}, "inner must be"),
        ("sha256", "deadbeef", "sha256 must be 64 lower-case hex digits"),
        ("training", None, "training must be an object"),
    ],
)
def test_a_card_with_a_bad_field_is_refused_naming_it(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    (tmp_path / "card.json").write_text(json.dumps({**card_with("0" * 64), field: value}))
    with pytest.raises(CheckpointError, match=message):
        load_card(tmp_path)


def test_training_state_restores_the_optimizer_and_the_task_generator(tmp_path: Path) -> None:
    weight = torch.randn(4, requires_grad=True)
    optimizer = torch.optim.Adam([weight], lr=0.1)
    for _ in range(3):
        weight.grad = torch.randn(4)
        optimizer.step()
    generator = torch.Generator().manual_seed(7)
    torch.rand(5, generator=generator)
    save_training_state(tmp_path, 3, optimizer, generator)

    restored_optimizer = torch.optim.Adam([weight.detach().clone().requires_grad_()], lr=0.1)
    restored_generator = torch.Generator()
    assert load_training_state(tmp_path, restored_optimizer, restored_generator) == 3
    expected, found = optimizer.state_dict(), restored_optimizer.state_dict()
    assert found["param_groups"] == expected["param_groups"]
    for key in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(found["state"][0][key], expected["state"][0][key])
    assert torch.equal(torch.rand(5, generator=restored_generator), torch.rand(5, generator=generator))


def test_a_checkpoint_cut_short_by_a_crash_recovers_to_a_whole_one(tmp_path: Path) -> None:
    optimizer, generator = torch.optim.Adam([torch.zeros(3, requires_grad=True)]), torch.Generator()
    save_checkpoint(tmp_path, card_with(""), {"w": torch.zeros(3)}, 1, optimizer, generator)

    # Killed before the card committed the new files: they are dropped, the last checkpoint stays.
    save_weights(tmp_path, {"w": torch.ones(3)}, WEIGHTS + PENDING)
    save_training_state(tmp_path, 2, optimizer, generator, TRAINING_STATE + PENDING)
    recover_checkpoint(tmp_path)
    assert torch.equal(load_weights(tmp_path, load_card(tmp_path))["w"], torch.zeros(3))
    assert load_training_state(tmp_path, optimizer, generator) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CARD, TRAINING_STATE, WEIGHTS])

    # Killed after: the step is finished.
    digest = save_weights(tmp_path, {"w": torch.ones(3)}, WEIGHTS + PENDING)
    save_training_state(tmp_path, 2, optimizer, generator, TRAINING_STATE + PENDING)
    save_card(tmp_path, card_with(digest))
    recover_checkpoint(tmp_path)
    assert torch.equal(load_weights(tmp_path, load_card(tmp_path))["w"], torch.ones(3))
    assert load_training_state(tmp_path, optimizer, generator) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CARD, TRAINING_STATE, WEIGHTS])
