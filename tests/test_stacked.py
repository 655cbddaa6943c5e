"""Many sessions in one batched computation answer exactly as each session alone: padded and masked
for per-example nets, grouped by size for batch norm, head-only (ANIL) included."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch
from torch import Tensor

from app.meta import InnerLoop, Learner, adapt, layers
from app.meta.flat import Flat, flatten, stacked
from app.meta.functional import final_params
from app.meta.stacked import adapt_many
from tests.conftest import assert_sessions_predict_as_each_alone, predict_each, signed_norm_weights

Support = tuple[Tensor, Tensor]


def leaves(learner: Learner) -> dict[str, Tensor]:
    return {k: v.detach() for k, v in learner.net.named_parameters()}


def regression_sets(sizes: list[int], generator: torch.Generator) -> list[Support]:
    return [(torch.randn(n, 1, generator=generator), torch.randn(n, 1, generator=generator)) for n in sizes]


def image_sets(sizes: list[int], generator: torch.Generator) -> list[Support]:
    return [
        (torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 5, (n,), generator=generator))
        for n in sizes
    ]


def assert_each_alone(learner: Learner, supports: list[Support], inner: InnerLoop) -> None:
    params = leaves(learner)
    batched = adapt_many(learner, params, supports, inner)
    assert len(batched) == len(supports)
    for (x, y), result in zip(supports, batched, strict=True):
        alone = adapt(learner, params, x, y, inner)
        assert set(result.changed.params()) == {k for k in params if inner.adapted(k)}
        for name, tensor in result.changed.params().items():
            torch.testing.assert_close(tensor, alone[name], rtol=1e-4, atol=1e-5)
        assert result.loss_before == pytest.approx(float(learner.losses(params, x, y)), rel=1e-4)
        assert result.loss_after == pytest.approx(float(learner.losses(alone, x, y)), rel=1e-4)
        assert result.loss_after < result.loss_before


def test_ragged_support_sets_adapt_as_each_alone(
    sinusoid_learner: Learner, generator: torch.Generator
) -> None:
    supports = regression_sets([5, 10, 1, 7, 10], generator)
    assert_each_alone(sinusoid_learner, supports, InnerLoop(3, 0.01))
    assert_each_alone(sinusoid_learner, supports, InnerLoop(3, 0.01, adapts="head"))


def test_batch_norm_nets_group_by_size(conv4_learner: Learner, generator: torch.Generator) -> None:
    supports = image_sets([5, 10, 5, 10, 3], generator)
    assert_each_alone(conv4_learner, supports, InnerLoop(2, 0.1))
    assert_each_alone(conv4_learner, supports, InnerLoop(2, 0.1, adapts="head"))


@pytest.mark.parametrize("statistics", ["centered", "var_mean"])
def test_conv_blocks_pooled_first_answer_as_each_set_alone_with_norm_weights_of_either_sign(
    conv4_learner: Learner, generator: torch.Generator, monkeypatch: pytest.MonkeyPatch, statistics: str
) -> None:
    """Stacked sets' conv blocks pool first, taking the images' statistics as a CPU does (centered in
    place) or as a GPU does (``var_mean``)."""
    pooled: list[bool] = []
    real = layers._pools_first

    def pools_first(x: Tensor) -> bool:
        pooled.append(real(x))
        return pooled[-1]

    monkeypatch.setattr("app.meta.layers._pools_first", pools_first)
    monkeypatch.setattr("app.meta.layers._centers_images", lambda y: statistics == "centered")
    params = leaves(conv4_learner)
    signed_norm_weights(conv4_learner, params, generator)  # negative ones negate their channels' filters
    supports, queries = image_sets([5] * 4, generator), [x for x, _ in image_sets([3] * 4, generator)]
    assert_sessions_predict_as_each_alone(conv4_learner, params, supports, queries)
    assert any(pooled) and not all(pooled), "pooled first in batches with no gradient, not otherwise"


def test_centered_image_statistics_keep_their_accuracy_where_the_mean_dwarfs_the_spread(
    generator: torch.Generator,
) -> None:
    """Images whose pixels lie near 100 with a spread of 0.01: a sum of raw squares loses every digit of
    their variance in float32; centering first keeps it as ``var_mean`` does."""
    centered = torch.randn(4, 5, 8, 28, 28, generator=generator) * 0.01 + 100
    x = centered.double()
    var, mean = torch.var_mean(x, dim=(3, 4), correction=0, keepdim=True)
    found_mean, found_var = layers._center_images(centered)
    torch.testing.assert_close(found_mean.double(), mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(found_var.double(), var, rtol=1e-4, atol=0)
    torch.testing.assert_close(centered.double(), x - found_mean.double(), rtol=0, atol=1e-7)
    raw_squares = x.float().square().mean((3, 4), keepdim=True) - found_mean.square()
    assert not torch.allclose(raw_squares.double(), var, rtol=0.5), "the case this guards against"


def sets_in(learner: Learner, x: Tensor) -> int:
    """How many sets one pass's input holds: its task dimension's length, or one set without it."""
    return x.shape[0] if x.dim() == len(learner.net.input_shape) + 2 else 1


def sets_per_pass(
    learner: Learner,
    params: dict[str, Tensor],
    changed: list[Flat],
    queries: list[Tensor],
    monkeypatch: pytest.MonkeyPatch,
) -> list[int]:
    """How many sets each forward pass of ``predict_batches`` took, once every set's outputs are checked
    against the same set predicted alone."""
    found: list[int] = []

    def counted(learner: Learner, p: dict[str, Tensor], x: Tensor) -> Tensor:
        found.append(sets_in(learner, x))
        return learner.predict(p, x)

    monkeypatch.setattr("app.meta.stacked._forward", counted)
    outputs = predict_each(learner, params, changed, queries)
    for c, x, out in zip(changed, queries, outputs, strict=True):
        torch.testing.assert_close(out, learner.predict({**params, **c.params()}, x), rtol=1e-4, atol=1e-5)
    return found


def test_batches_split_where_their_first_layer_would_pass_the_budget(
    sinusoid_learner: Learner, generator: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.meta.stacked.BATCH_VALUES", 3 * 10 * 40)  # 3 sets of 10 through 40 units
    supports = regression_sets([10, 4, 10, 7, 10, 10, 2], generator)  # 3, 3 and 1 sets at once
    assert_each_alone(sinusoid_learner, supports, InnerLoop(2, 0.01))
    params = leaves(sinusoid_learner)
    changed = [a.changed for a in adapt_many(sinusoid_learner, params, supports, InnerLoop(1, 0.01))]
    queries = [torch.randn(n, 1, generator=generator) for n in (10, 3, 1, 2, 10, 3, 5)]
    passes = sets_per_pass(sinusoid_learner, params, changed, queries, monkeypatch)
    assert passes == [3, 3, 1], "padded to 10 points, three sets fill the budget"


def test_learned_rates_apply_to_every_session(sinusoid_learner: Learner, generator: torch.Generator) -> None:
    learner = sinusoid_learner
    params = leaves(learner) | {f"inner_lr/{k}": torch.full_like(v, 0.02) for k, v in leaves(learner).items()}
    supports = regression_sets([4, 9], generator)
    batched = adapt_many(learner, params, supports, InnerLoop(2, 0.5))
    for (x, y), result in zip(supports, batched, strict=True):
        alone = adapt(learner, params, x, y, InnerLoop(2, 0.5))
        for name, tensor in result.changed.params().items():
            torch.testing.assert_close(tensor, alone[name], rtol=1e-4, atol=1e-5)


def test_ragged_queries_predict_as_each_alone(sinusoid_learner: Learner, generator: torch.Generator) -> None:
    params = leaves(sinusoid_learner)
    supports = regression_sets([5, 6, 7], generator)
    sessions = [a.changed for a in adapt_many(sinusoid_learner, params, supports, InnerLoop(1, 0.01))]
    queries = [torch.randn(n, 1, generator=generator) for n in (3, 100, 1)]
    outputs = predict_each(sinusoid_learner, params, sessions, queries)
    for changed, x, out in zip(sessions, queries, outputs, strict=True):
        torch.testing.assert_close(
            out, sinusoid_learner.predict({**params, **changed.params()}, x), rtol=1e-5, atol=1e-6
        )


def test_batch_norm_queries_group_by_size(conv4_learner: Learner, generator: torch.Generator) -> None:
    params = leaves(conv4_learner)
    heads = [
        a.changed
        for a in adapt_many(
            conv4_learner, params, image_sets([5] * 4, generator), InnerLoop(1, 0.1, adapts="head")
        )
    ]
    queries = [x for x, _ in image_sets([2, 8, 2, 8], generator)]
    outputs = predict_each(conv4_learner, params, heads, queries)
    for changed, x, out in zip(heads, queries, outputs, strict=True):
        torch.testing.assert_close(
            out, conv4_learner.predict({**params, **changed.params()}, x), rtol=1e-4, atol=1e-5
        )


def test_conv_sets_stack_by_size_adapting_and_predicting(
    conv4_learner: Learner, generator: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = leaves(conv4_learner)
    supports = image_sets([2, 2, 1, 2, 3, 2, 2, 1, 1], generator)
    adapted: list[int] = []

    def counted(learner: Learner, p: dict[str, Tensor], x: Tensor, *rest: Any) -> dict[str, Tensor]:
        adapted.append(sets_in(learner, x))
        return final_params(learner, p, x, *rest)

    monkeypatch.setattr("app.meta.stacked.final_params", counted)
    assert_each_alone(conv4_learner, supports, InnerLoop(2, 0.1))
    assert sorted(adapted) == [1, 3, 5], "the five sets of 2 at once, the three of 1, the one of 3"
    assert_each_alone(conv4_learner, supports, InnerLoop(2, 0.1, adapts="head"))
    heads = [a.changed for a in adapt_many(conv4_learner, params, supports, InnerLoop(1, 0.1, adapts="head"))]
    queries = [x for x, _ in image_sets([2, 1, 2, 2, 1, 2, 2, 2, 3], generator)]
    passes = sets_per_pass(conv4_learner, params, heads, queries, monkeypatch)
    assert sorted(passes) == [1, 2, 6], "the six sets of 2 at once, the two of 1, the one of 3"


def test_initialization_alone_predicts_through_the_same_path(sinusoid_learner: Learner) -> None:
    params = leaves(sinusoid_learner)
    queries = [torch.linspace(-5, 5, n).unsqueeze(-1) for n in (4, 9)]
    outputs = predict_each(sinusoid_learner, params, [flatten({})] * 2, queries)
    for x, out in zip(queries, outputs, strict=True):
        torch.testing.assert_close(out, sinusoid_learner.predict(params, x))


def test_mismatched_sets_are_refused(sinusoid_learner: Learner) -> None:
    params = leaves(sinusoid_learner)
    with pytest.raises(ValueError, match="same tensor names"):
        stacked([flatten({"a": torch.zeros(1)}), flatten({"b": torch.zeros(1)})])
    with pytest.raises(ValueError, match="one query set per parameter set"):
        predict_each(sinusoid_learner, params, [flatten({})], [torch.zeros(1, 1), torch.zeros(1, 1)])


def test_flat_sets_stack_into_the_tensors_they_were_made_of(generator: torch.Generator) -> None:
    sets = [
        {"w": torch.randn(3, 4, generator=generator).T, "b": torch.randn(4, generator=generator)}
        for _ in range(3)
    ]
    flats = [flatten(s) for s in sets]
    assert all(f.layout is flats[0].layout for f in flats), "one layout object per kind of set"
    together = stacked(flats)
    for name in ("w", "b"):
        torch.testing.assert_close(together[name], torch.stack([s[name] for s in sets]), rtol=0, atol=0)
    row = Flat(torch.cat([torch.zeros(5), flats[1].tensor]), flats[1].layout)
    row = Flat(row.tensor[5:], row.layout)  # a view at an offset, as a row of a batch is
    assert all(torch.equal(row.params()[k], sets[1][k]) for k in ("w", "b"))


def test_one_learner_serves_many_threads_at_once(
    sinusoid_learner: Learner, generator: torch.Generator
) -> None:
    """``functional_call`` swaps the net's tensors in place: unguarded, threads would corrupt each other."""
    params = leaves(sinusoid_learner)
    supports = regression_sets([10] * 8, generator)
    expected = [a.changed for a in adapt_many(sinusoid_learner, params, supports, InnerLoop(3, 0.01))]

    def work(index: int) -> list[Flat]:
        return [
            a.changed
            for a in adapt_many(sinusoid_learner, params, [supports[index]] * 20, InnerLoop(3, 0.01))
        ]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for index, found in enumerate(results):
        for changed in found:
            for name, tensor in changed.params().items():
                torch.testing.assert_close(tensor, expected[index].params()[name], rtol=1e-4, atol=1e-5)
