"""Request data as a model's tensors: examples from JSON lists (numbers, nested lists, base64 PNG images)
and targets or class labels, refused with a ``ValueError`` that names the field, the index and the reason."""

from __future__ import annotations

import base64
import io
import reprlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from app.families.images import image_to_input
from app.serving.registry import LoadedModel

__all__ = ["MAX_IMAGE_PIXELS", "Label", "query_tensor", "support_tensors"]

Label = str | int
"""A class label as the request gave it; the head's class ``i`` is the ``i``-th distinct label."""

MAX_IMAGE_PIXELS = 4096 * 4096
"""Largest uploaded image; a small PNG can decode to gigabytes, so the size is checked before decoding."""


def support_tensors(
    model: LoadedModel, x: list[Any], y: list[Any], limit: int
) -> tuple[Tensor, Tensor, list[Label] | None]:
    """The support set on the host (a batch of them goes to the device in one copy): inputs, targets
    (regression) or head classes (classification), and the label map (the distinct labels in order of
    first appearance; None for regression). At most ``limit`` examples."""
    inputs = _inputs(model, x, limit)
    if not isinstance(y, list):
        raise ValueError(f"y: must be a list with one target per example; got {type(y).__name__}")
    if len(y) != len(x):
        raise ValueError(f"y: {len(y)} targets for {len(x)} examples in x; give one per example")
    if model.kind == "classification":
        classes, label_map = _classes(y, model.ways)
        return inputs, classes, label_map
    return inputs, torch.from_numpy(_stacked(y, (model.ways,), "y", _target)), None


def query_tensor(model: LoadedModel, x: list[Any], limit: int) -> Tensor:
    """Query inputs on the host (a batch of them goes to the device in one copy), at most ``limit``."""
    return _inputs(model, x, limit)


def _inputs(model: LoadedModel, x: list[Any], limit: int) -> Tensor:
    if not isinstance(x, list):
        raise ValueError(f"x: must be a list of examples; got {type(x).__name__}")
    if not x:
        raise ValueError("x: is empty; give at least one example")
    if len(x) > limit:
        raise ValueError(f"x: {len(x)} examples; at most {limit} are allowed")
    return torch.from_numpy(_stacked(x, model.input_shape, "x", _input))


def _stacked(
    values: list[Any],
    shape: tuple[int, ...],
    field: str,
    one: Callable[[Any, tuple[int, ...], str], np.ndarray],
) -> np.ndarray:
    """``values`` as one float32 array ``[len(values), *shape]``. Plain numbers of the right shape take one
    numpy conversion; anything else goes example by example through ``one``, which names what is wrong."""
    try:
        array = None if _holds_bool(values) else np.asarray(values)
    except ValueError:  # nested lists of unequal lengths
        array = None
    if array is not None and array.dtype.kind in "iuf":
        if shape[0] == 1 and array.shape[1:] == shape[1:]:
            array = array[:, None]
        with np.errstate(over="ignore"):
            array = array.astype(np.float32)
        if array.shape[1:] == shape and np.isfinite(array).all():
            return array
    return np.stack([one(value, shape, f"{field}[{i}]") for i, value in enumerate(values)])


def _holds_bool(values: list[Any]) -> bool:
    """Whether a true or false hides in nested lists, where numpy would read it as a number. The types of a
    list are gathered in C first: a flat list of numbers, the usual support set, takes no Python loop."""
    kinds = set(map(type, values))
    return bool in kinds or (list in kinds and any(type(v) is list and _holds_bool(v) for v in values))


def _input(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """One example: a base64 PNG for a one-channel square input, otherwise numbers in nested lists."""
    if isinstance(value, str):
        return _image(value, shape, where)
    return _shaped(_numbers(value, where), shape, where)


def _numbers(value: Any, where: str) -> np.ndarray:
    """A number or nested lists of numbers as finite float32."""
    if isinstance(value, bool) or not isinstance(value, int | float | list):
        raise ValueError(f"{where}: expected a number or nested lists of numbers; got {type(value).__name__}")
    if isinstance(value, list) and _holds_bool(value):
        raise ValueError(f"{where}: expected numbers only; found true or false")
    try:
        array = np.asarray(value)
    except ValueError:
        raise ValueError(f"{where}: nested lists of unequal lengths; every row must be as long") from None
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{where}: expected numbers only; found other values ({array.dtype})")
    with np.errstate(over="ignore"):  # what overflows float32 becomes inf, refused just below
        array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{where}: holds non-finite values (nan, inf, or beyond float32's range)")
    return array


def _shaped(array: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """``array`` as ``shape``; a bare number stands for a 1-vector and an image may come without its
    single channel."""
    if shape[0] == 1 and array.shape == shape[1:]:
        array = array[None]
    if array.shape != shape:
        raise ValueError(f"{where}: expected shape {shape}, got {array.shape}")
    return array


def _image(text: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
        raise ValueError(
            f"{where}: a string is read as a base64 PNG image, but this model takes inputs of shape {shape}, "
            "not one-channel square images; send numbers"
        )
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError as error:  # binascii.Error, or a ValueError for characters beyond ASCII
        raise ValueError(f"{where}: not valid base64 ({error})") from None
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{where}: image of {image.width}x{image.height} pixels; at most {MAX_IMAGE_PIXELS}"
                )
            image.load()
            return image_to_input(image, shape[1])
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"{where}: not a readable PNG image ({error})") from None


def _classes(y: list[Any], ways: int) -> tuple[Tensor, list[Label]]:
    """Head classes numbered by first appearance, and the labels in that order."""
    index: dict[Label, int] = {}
    as_text: dict[str, Label] = {}
    for i, label in enumerate(y):
        if isinstance(label, bool) or not isinstance(label, str | int):
            raise ValueError(
                f"y[{i}]: this model is a classifier; a class label must be a string or an integer, "
                f"got {type(label).__name__} {reprlib.repr(label)}"
            )
        if label in index:
            continue
        # Labels become the keys of JSON objects (the probabilities), where 1 and "1" would collide.
        if as_text.setdefault(str(label), label) != label:
            raise ValueError(f"y[{i}]: labels {as_text[str(label)]!r} and {label!r} read the same as text")
        index[label] = len(index)
        if len(index) > ways:
            raise ValueError(f"y: more than {ways} distinct labels; this model's head has {ways} classes")
    return torch.tensor([index[label] for label in y], dtype=torch.int64), list(index)


def _target(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    if isinstance(value, str):
        raise ValueError(
            f"{where}: this model is a regressor; a target must be a number, got {reprlib.repr(value)}"
        )
    return _shaped(_numbers(value, where), shape, where)
