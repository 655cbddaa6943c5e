"""Checkpoints: an initialization's weights (safetensors) beside its JSON model card, and the training
state that lets ``metaserve train --resume`` continue a run exactly. Files are written atomically, and a
checkpoint's three as one step that its card commits."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from app.files import write_atomically
from app.meta import Params
from app.meta.tasks.family import Kind

__all__ = [
    "CARD_FIELDS",
    "CARD_NAME",
    "CheckpointError",
    "load_card",
    "load_training_state",
    "load_weights",
    "recover_checkpoint",
    "save_card",
    "save_checkpoint",
    "save_training_state",
    "save_weights",
    "sha256_of",
]

WEIGHTS, CARD, TRAINING_STATE = "weights.safetensors", "card.json", "training-state.safetensors"
PENDING = ".pending"
"""The suffix of a checkpoint's new files until its card commits them."""
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


CARD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A model's name: it becomes a folder and half of ``name@version``, so nothing that leaves a folder or
splits a ref."""


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, or does not match its card."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_weights(directory: Path, params: Params, name: str = WEIGHTS) -> str:
    """Save the meta-parameters (net tensors and any learned inner rates); returns their sha256."""
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    path = Path(directory) / name
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


def save_checkpoint(
    directory: Path,
    card: Mapping[str, Any],
    params: Params,
    iteration: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    """Weights, training state and ``card`` (its sha256 filled in) as one step that no crash can split:
    the new weights and state are written beside the old ones, the card naming the new weights commits
    them, and then they take the old ones' place (``recover_checkpoint`` ends a step a crash cut short)."""
    directory = Path(directory)
    sha256 = save_weights(directory, params, WEIGHTS + PENDING)
    save_training_state(directory, iteration, optimizer, generator, TRAINING_STATE + PENDING)
    save_card(directory, {**card, "sha256": sha256})
    _settle(directory)


def recover_checkpoint(directory: Path) -> None:
    """Finish the checkpoint that a crash interrupted once its card was written, or drop the new files of
    one interrupted before: afterwards the weights, training state and card in ``directory`` agree."""
    directory = Path(directory)
    pending = directory / (WEIGHTS + PENDING)
    if not pending.is_file():
        return
    card = directory / CARD
    if card.is_file() and json.loads(card.read_text()).get("sha256") == sha256_of(pending):
        _settle(directory)
        return
    pending.unlink()
    (directory / (TRAINING_STATE + PENDING)).unlink(missing_ok=True)


def _settle(directory: Path) -> None:
    """Move the committed new state, then the new weights, over the old ones (weights last: while they
    wait, ``recover_checkpoint`` knows the step is unfinished)."""
    state = directory / (TRAINING_STATE + PENDING)
    if state.is_file():
        state.replace(directory / TRAINING_STATE)
    (directory / (WEIGHTS + PENDING)).replace(directory / WEIGHTS)


def save_card(directory: Path, card: Mapping[str, Any]) -> None:
    missing = [f for f in CARD_FIELDS if f not in card]
    if missing:
        raise CheckpointError(f"model card lacks {missing}")
    text = json.dumps(card, indent=2, sort_keys=False) + "\n"
    write_atomically(Path(directory) / CARD, text.encode(), PUBLIC)


def load_card(directory: Path) -> dict[str, Any]:
    """The model card, with every required field present and of the type that ``_card_problems`` checks."""
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
    bad = _card_problems(card)
    if bad:
        raise CheckpointError(f"{path}: model card: {'; '.join(bad)}")
    return card


def _card_problems(card: Mapping[str, Any]) -> list[str]:
    """What is wrong with the fields that loading, serving and resuming rely on, each naming its field."""
    rules = {
        "name": ("1 to 64 letters, digits, '.', '_' or '-', the first a letter or digit",
                 isinstance(card["name"], str) and CARD_NAME.fullmatch(card["name"]) is not None),
        "version": ("an integer >= 1", type(card["version"]) is int and card["version"] >= 1),
        "algorithm": ("a string", isinstance(card["algorithm"], str)),
        "net": ("an object with a string 'name'", isinstance(card["net"], dict)
                and isinstance(card["net"].get("name"), str)),
        "family": (f"an object whose 'kind' is one of {get_args(Kind)}", isinstance(card["family"], dict)
                   and card["family"].get("kind") in get_args(Kind)),
        "inner": ("an object with integer 'steps' >= 1, a finite 'lr' > 0 and a string 'adapts'",
                  isinstance(card["inner"], dict) and _inner_ok(card["inner"])),
        "command": ("a string", isinstance(card["command"], str)),
        "seed": ("an integer", type(card["seed"]) is int),
        "training": ("an object", isinstance(card["training"], dict)),
        "metrics": ("an object", isinstance(card["metrics"], dict)),
        "sha256": ("64 lower-case hex digits", isinstance(card["sha256"], str)
                   and re.fullmatch(r"[0-9a-f]{64}", card["sha256"]) is not None),
    }  # fmt: skip
    return [f"{field} must be {what}; got {card[field]!r}" for field, (what, ok) in rules.items() if not ok]


def _inner_ok(inner: Mapping[str, Any]) -> bool:
    steps, lr = inner.get("steps"), inner.get("lr")
    if isinstance(steps, bool) or isinstance(lr, bool):
        return False
    steps_ok = isinstance(steps, int) and steps >= 1
    lr_ok = isinstance(lr, int | float) and math.isfinite(lr) and lr > 0
    return steps_ok and lr_ok and isinstance(inner.get("adapts"), str)


def save_training_state(
    directory: Path,
    iteration: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    name: str = TRAINING_STATE,
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
    write_atomically(Path(directory) / name, save(tensors, metadata), PUBLIC)


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
