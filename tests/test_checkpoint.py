"""Checkpoints round-trip bit-exactly, carry a complete card, and refuse corrupt or mismatched files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from app.checkpoint import (
    CARD_FIELDS,
    CheckpointError,
    load_card,
    load_training_state,
    load_weights,
    save_card,
    save_training_state,
    save_weights,
)
from app.meta import InnerLoop, Learner, build_algorithm


def card_with(sha256: str) -> dict[str, object]:
    return {field: None for field in CARD_FIELDS} | {"name": "m", "sha256": sha256}


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
