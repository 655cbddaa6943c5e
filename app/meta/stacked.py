"""Many parameter sets at once: several sessions adapted or queried in one batched computation.

The sets are stacked along a leading task dimension, which every layer takes natively (see ``layers``),
so a batch of sessions runs as one forward (and backward) pass instead of one per session. Sets of
different sizes are padded, with the padding masked out of the loss, when the net treats examples
independently; a net with batch norm, whose statistics mix a set's examples, runs each size as its own
batch instead. Either way every answer equals the one computed for that set alone. A batch whose
activations would pass ``BATCH_VALUES`` splits. Conv nets stack on a CPU as on a GPU, from two sets; the
process keeps freed memory mapped (``host_memory``) so that their large activations are not faulted in
afresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from app.meta.flat import Flat, rows_of, stacked
from app.meta.functional import InnerLoop, Learner, Params, compiled_form, final_params

__all__ = ["BATCH_VALUES", "Adaptation", "Batch", "adapt_many", "predict_batches"]

BATCH_VALUES = 2**29
"""Most first-layer values (2 GiB of float32) one batch computes, larger batches splitting: 1,024 glyph
sessions of ten queries still run as one batch on a GPU, while 64 calls of 10,000 glyph queries each run
one by one (as a set larger than this does) instead of as one batch of 128 GiB."""


@dataclass(frozen=True)
class Adaptation:
    """One support set's result: the tensors adaptation changed (a row of one tensor of the batch's),
    and its support loss before and after."""

    changed: Flat
    loss_before: float
    loss_after: float


class Batch(NamedTuple):
    """One forward pass's outputs: row ``r`` of ``out`` answers the query set ``indices[r]`` in its first
    ``len(xs[indices[r]])`` positions; the rest, if any, is padding."""

    indices: list[int]
    out: Tensor


def predict_batches(
    learner: Learner,
    base: Params,
    changed: Sequence[Flat],
    xs: Sequence[Tensor],
    compile_forward: bool = False,
    to: torch.device | None = None,
) -> list[Batch]:
    """The outputs for each query set ``xs[i]`` of the parameters ``{**base, **changed[i]}``, as the
    batches they ran in; the ``changed`` sets share one layout (a session's adapted tensors, or none for
    the initialization). ``compile_forward`` runs the forward passes through ``torch.compile``. Query sets
    on another device than ``base`` (a GPU's queries read on the host) move there in one copy per batch,
    and ``to`` moves the outputs back the same way: no tensor per set either way."""
    forward = compiled_form(_forward) if compile_forward else _forward
    if len(changed) != len(xs):
        raise ValueError(f"give one query set per parameter set: {len(changed)} sets, {len(xs)} query sets")
    batches, device = [], _device(base)
    with torch.no_grad():
        for group in _groups(learner, xs):
            x = _batch([xs[i] for i in group], device)
            sets = changed[group[0]].params() if len(group) == 1 else stacked([changed[i] for i in group])
            out = forward(learner, {**base, **sets}, x)
            out = out if to is None else out.to(to)
            batches.append(Batch(group, out.unsqueeze(0) if len(group) == 1 else out))
    return batches


def adapt_many(
    learner: Learner,
    params: Params,
    supports: Sequence[tuple[Tensor, Tensor]],
    inner: InnerLoop,
    compile_steps: bool = False,
) -> list[Adaptation]:
    """Adapt ``params`` to each support set ``(x, y)`` with the same inner loop, with no meta-gradient,
    for sets the caller has already checked (``Learner.check``); ``compile_steps`` runs the inner steps
    through ``torch.compile``. When only the head adapts (ANIL), the body runs once per set, batched as
    ``_groups`` allows, then every head's steps run as one batch: a head treats examples independently, so
    sets of any sizes pad, and bodies that ran set by set still share their heads' steps."""
    steps = compiled_form(final_params) if compile_steps else final_params
    results: list[Adaptation | None] = [None] * len(supports)
    xs, device = [x for x, _ in supports], _device(params)
    with torch.no_grad():
        features = _features(learner, params, xs) if inner.adapts == "head" else None
        groups = [list(range(len(xs)))] if features is not None and xs else _groups(learner, xs)
        for group in groups:
            x, y = _batch([xs[i] for i in group], device), _batch([supports[i][1] for i in group], device)
            sizes = [xs[i].shape[0] for i in group]
            mask = None
            if min(sizes) != max(sizes):
                lengths = torch.tensor(sizes, device=x.device)
                mask = (torch.arange(x.shape[1], device=x.device) < lengths[:, None]).to(x.dtype)
            if features is not None:  # the body's output is the same before, during and after
                seen = _batch([features[i] for i in group], device)
                adapted = steps(learner, params, x, y, inner, "none", mask, seen)
                losses = [learner.head_losses(p, seen, y, mask) for p in (params, adapted)]
            else:
                adapted = steps(learner, params, x, y, inner, "none", mask)
                losses = [learner.losses(p, x, y, mask) for p in (params, adapted)]
            before, after = (loss.reshape(-1).tolist() for loss in losses)
            names = [k for k in adapted if inner.adapted(k)]
            batch = adapted if len(group) > 1 else {k: adapted[k].unsqueeze(0) for k in names}
            for row, (i, changed) in enumerate(zip(group, rows_of(batch, names), strict=True)):
                results[i] = Adaptation(changed, before[row], after[row])
    return [r for r in results if r is not None]


def _features(learner: Learner, params: Params, xs: Sequence[Tensor]) -> list[Tensor]:
    """The body's output on each set, the sets batched as ``_groups`` allows."""
    found: list[Tensor] = [torch.empty(0)] * len(xs)
    for group in _groups(learner, xs):
        out = learner.features(params, _batch([xs[i] for i in group], _device(params)))
        for row, i in zip([out] if len(group) == 1 else out.unbind(), group, strict=True):
            found[i] = row[: xs[i].shape[0]]  # a padded set's rows past its own are padding
    return found


def _forward(learner: Learner, params: Params, x: Tensor) -> Tensor:
    """``learner.predict`` as a plain function, which ``torch.compile`` takes once for every learner."""
    return learner.predict(params, x)


def _batch(sets: Sequence[Tensor], device: torch.device) -> Tensor:
    """One set as it is, or several along a new task dimension, padded with zeros to the longest; on
    ``device``, in one copy where the sets lie elsewhere."""
    if len(sets) == 1:
        return sets[0].to(device)
    try:
        batch = torch.stack(list(sets))  # a tenth of pad_sequence's time, and no Python pass over sizes
    except RuntimeError:  # sizes differ
        batch = pad_sequence(list(sets), batch_first=True)
    return batch.to(device)


def _device(params: Params) -> torch.device:
    """Where a parameter set lies (and so where its batches run)."""
    return next(iter(params.values())).device


def _groups(learner: Learner, xs: Sequence[Tensor]) -> list[list[int]]:
    """Indices of the sets that run as one batch: all of them when padding is exact, else by size, in
    batches of at most ``BATCH_VALUES`` first-layer values."""
    if not xs:
        return []
    by_size: dict[int, list[int]] = {}
    per_example = learner.net.per_example  # a walk over the net's modules: once, not once per set
    for i, x in enumerate(xs):
        by_size.setdefault(0 if per_example else x.shape[0], []).append(i)
    values, batches = _first_values(learner.net, xs[0]), []
    for group in by_size.values():
        per = max(1, BATCH_VALUES // (max(xs[i].shape[0] for i in group) * values))
        batches += [group[start : start + per] for start in range(0, len(group), per)]
    return batches


def _first_values(net: nn.Module, x: Tensor) -> int:
    """How many values the net's first layer outputs per example of ``x``: a conv net's largest activation."""
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    if isinstance(first, nn.Conv2d):
        return first.out_channels * x.shape[-2] * x.shape[-1]
    return first.out_features
