"""Checkpoints: an initialization's weights (safetensors) beside its JSON model card, and the training
state that lets ``metaserve train --resume`` continue a run exactly. Files are written atomically."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from app.files import write_atomically
from app.meta import Params

__all__ = [
    "CARD_FIELDS",
    "CheckpointError",
    "load_card",
    "load_training_state",
    "load_weights",
    "save_card",
    "save_training_state",
    "save_weights",
    "sha256_of",
]

WEIGHTS, CARD, TRAINING_STATE = "weights.safetensors", "card.json", "training-state.safetensors"
PUBLIC = 0o644
"""A model's files are read by the service's user, whoever trained it."""
CARD_FIELDS = (
    "name",
    "version",
    "algorithm",
    "net",
    "family",
    "inner",
    "command",
    "seed",
    "training",
    "metrics",
    "sha256",
)


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its card."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_weights(directory: Path, params: Params) -> str:
    """Save the meta-parameters (net tensors and any learned inner rates); returns their sha256."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    path = Path(directory) / WEIGHTS
    write_atomically(path, save(tensors), PUBLIC)
    return sha256_of(path)


def load_weights(directory: Path, card: Mapping[str, Any] | None = None) -> Params:
    """Load the weights, checking them against the card's sha256 when a card is given."""
    path = Path(directory) / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: no weights file")
    if card is not None and sha256_of(path) != card["sha256"]:
        raise CheckpointError(f"{path}: sha256 differs from the card's; the file is corrupt or replaced")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None


def save_card(directory: Path, card: Mapping[str, Any]) -> None:
    missing = [f for f in CARD_FIELDS if f not in card]
    if missing:
        raise CheckpointError(f"model card lacks {missing}")
    text = json.dumps(card, indent=2, sort_keys=False) + "\n"
    write_atomically(Path(directory) / CARD, text.encode(), PUBLIC)


def load_card(directory: Path) -> dict[str, Any]:
    """The model card, with every required field present."""
    path = Path(directory) / CARD
    if not path.is_file():
        raise CheckpointError(f"{path}: no model card")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{path}: a model card must be a JSON object")
    missing = [f for f in CARD_FIELDS if f not in card]
    if missing:
        raise CheckpointError(f"{path}: model card lacks the fields {missing}")
    return card


def save_training_state(
    directory: Path, iteration: int, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> None:
    """Optimizer moments, the task sampler's generator and the iteration, as tensors plus JSON metadata."""
    state = optimizer.state_dict()
    tensors = {"generator": generator.get_state()}
    scalars: dict[str, Any] = {}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}/{key}"] = value
    # Hyperparameters (param_groups) are not saved: the run's spec rebuilds them, and resume checks it.
    metadata = {"iteration": str(iteration), "scalars": json.dumps(scalars)}
    write_atomically(Path(directory) / TRAINING_STATE, save(tensors, metadata), PUBLIC)


def load_training_state(directory: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> int:
    """Restore the optimizer and generator saved by ``save_training_state``; returns the iteration."""
    path = Path(directory) / TRAINING_STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: no training state to resume from")
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata()
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, slot = key.split("/", 2)
            state.setdefault(int(index), {})[slot] = value
    for key, value in json.loads(metadata["scalars"]).items():
        index, slot = key.split("/", 1)
        state.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    generator.set_state(tensors["generator"])
    return int(metadata["iteration"])
