"""A parameter set as one flat tensor and a shared layout: what a session keeps, stores and batches.

One tensor per set, not one per parameter, so that keeping, copying or stacking a set costs one tensor
operation however many parameters it holds: a batch of 1,024 sessions stacks 1,024 tensors, not 6,144
(``bench/batched.py``), and the session cache holds one tensor object per session (``bench/resident.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from app.meta.functional import Params

__all__ = ["Flat", "Layout", "Slot", "flatten", "layout_of", "rows_of", "stacked"]


class Slot(NamedTuple):
    """Where one parameter lies, contiguous, in a set's flat tensor."""

    name: str
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    size: int


Layout = tuple[Slot, ...]
"""The slots of one kind of parameter set, shared by every set of that kind (``layout_of``)."""

_LAYOUTS: dict[tuple[tuple[str, tuple[int, ...]], ...], Layout] = {}


class Flat(NamedTuple):
    """A parameter set as one contiguous 1-D tensor of one dtype, named slice by slice by ``layout``."""

    tensor: Tensor
    layout: Layout

    def params(self) -> Params:
        """The parameters as views of ``tensor`` (``as_strided``: a third of the cost of split and view)."""
        base = self.tensor.storage_offset()
        return {s.name: self.tensor.as_strided(s.shape, s.stride, base + s.offset) for s in self.layout}

    def to(self, device: torch.device, copy: bool = False) -> Flat:
        """The set on ``device``; ``copy`` makes a tensor of its own even where it already lies there."""
        return Flat(self.tensor.to(device, copy=copy), self.layout)


def layout_of(shapes: Sequence[tuple[str, tuple[int, ...]]]) -> Layout:
    """The one layout of parameters with these names and shapes, laid end to end in this order."""
    kind = tuple((name, tuple(shape)) for name, shape in shapes)
    found = _LAYOUTS.get(kind)
    if found is None:
        slots, offset = [], 0
        for name, shape in kind:
            stride = tuple(math.prod(shape[i + 1 :]) for i in range(len(shape)))
            slots.append(Slot(name, shape, stride, offset, math.prod(shape)))
            offset += slots[-1].size
        found = _LAYOUTS.setdefault(kind, tuple(slots))
    return found


def flatten(params: Params) -> Flat:
    """``params`` copied into one flat tensor (on their device); all must share one dtype, since a
    concatenation would silently promote mixed ones."""
    tensors = list(params.values())
    if any(t.dtype != tensors[0].dtype for t in tensors):
        got = {name: str(t.dtype) for name, t in params.items()}
        raise TypeError(f"params: a flat set holds one dtype; got {got}")
    layout = layout_of([(name, t.shape) for name, t in params.items()])
    flat = torch.cat([t.detach().reshape(-1) for t in tensors]) if tensors else torch.empty(0)
    return Flat(flat, layout)


def rows_of(batch: Params, names: Sequence[str]) -> list[Flat]:
    """Each set of a batch (the ``names`` of ``batch``, stacked along a leading set dimension) as a flat
    row of one new tensor: one concatenation for the batch, one view per set."""
    tensors = [batch[name] for name in names]
    layout = layout_of([(name, t.shape[1:]) for name, t in zip(names, tensors, strict=True)])
    flat = torch.cat([t.detach().flatten(1) for t in tensors], dim=1)
    return [Flat(row, layout) for row in flat.unbind()]


def stacked(sets: Sequence[Flat]) -> Params:
    """Sets of one layout as parameters stacked along a new leading dimension: one stack of their flat
    tensors, one view per parameter."""
    layout = sets[0].layout
    if any(s.layout is not layout and s.layout != layout for s in sets):
        raise ValueError("stacked parameter sets must all hold the same tensor names and shapes")
    if not layout:  # queries on an initialization as it is: nothing to stack
        return {}
    batch = torch.stack([s.tensor for s in sets])
    width = batch.shape[1]
    return {s.name: batch.as_strided((len(sets), *s.shape), (width, *s.stride), s.offset) for s in layout}
