"""Property tests (hypothesis) of the engine's and the service's input checks: any shape, dtype, NaN, inf,
empty set or JSON value is either accepted or refused with a ``ValueError``/``TypeError`` that names the
field, never anything else; well-formed inputs always pass."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.meta import InnerLoop, Learner, build_net
from app.meta.batch import check_examples
from app.meta.tasks.family import Kind
from app.serving.examples import query_tensor, support_tensors
from app.serving.registry import LoadedModel

EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELD = re.compile(r"(x|y)(\[\d+\])*: .+", re.DOTALL)
"""How the service's messages start (``app.api.errors`` turns the field into the 422's ``loc``)."""

DTYPES = [torch.float32, torch.float64, torch.float16, torch.int64, torch.int32, torch.uint8, torch.bool]
SPECIALS = [0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf"), 1e38, -1e-38]


@st.composite
def tensors(draw: st.DrawFn) -> torch.Tensor:
    """A tensor of 0 to 4 dimensions of 0 to 4 each, any dtype, sprinkled with NaN and infinities."""
    shape = draw(st.lists(st.integers(0, 4), max_size=4))
    values = draw(st.lists(st.sampled_from(SPECIALS) | st.floats(-1e3, 1e3), min_size=1, max_size=4))
    flat = torch.tensor(values * (1 + torch.Size(shape).numel() // len(values)))[: torch.Size(shape).numel()]
    return flat.reshape(shape).to(draw(st.sampled_from(DTYPES)))


@st.composite
def finite_sets(draw: st.DrawFn, input_shape: tuple[int, ...], batched: bool) -> torch.Tensor:
    """Finite float examples ``[N, *input_shape]`` (``[T, N, ...]`` when ``batched``), N and T at least 1."""
    lead = [draw(st.integers(1, 3)) for _ in range(2 if batched else 1)]
    numel = torch.Size([*lead, *input_shape]).numel()
    values = draw(st.lists(st.floats(-1e3, 1e3, width=32), min_size=numel, max_size=numel))
    return torch.tensor(values).reshape(*lead, *input_shape)


def refused_naming(error: Exception, what: str) -> bool:
    return isinstance(error, ValueError | TypeError) and what in str(error)


@EXAMPLES
@given(tensors(), tensors(), st.sampled_from([(1,), (2, 3), (1, 4, 4)]))
def test_check_examples_accepts_or_refuses_naming_the_set(
    x: torch.Tensor, y: torch.Tensor, input_shape: tuple[int, ...]
) -> None:
    try:
        tasks = check_examples(x, y, input_shape, "support")
    except Exception as error:
        assert refused_naming(error, "support"), repr(error)
    else:
        assert tasks is None or tasks == x.shape[0]
        assert x.is_floating_point() and bool(torch.isfinite(x).all())


@EXAMPLES
@given(st.data(), st.booleans())
def test_check_examples_passes_finite_examples_with_one_target_each(
    data: st.DataObject, batched: bool
) -> None:
    x = data.draw(finite_sets((2, 3), batched))
    y = torch.zeros(*x.shape[: x.dim() - 2], 1)
    assert check_examples(x, y, (2, 3), "query") == (x.shape[0] if batched else None)


LEARNERS = {
    "mse": Learner(build_net({"name": "mlp", "sizes": [1, 8, 1]}), "mse"),
    "cross_entropy": Learner(
        build_net({"name": "conv4", "ways": 3, "hidden": 4, "size": 16}), "cross_entropy"
    ),
}


@EXAMPLES
@given(tensors(), tensors(), st.sampled_from(sorted(LEARNERS)))
def test_learner_check_accepts_or_refuses_naming_the_set(x: torch.Tensor, y: torch.Tensor, loss: str) -> None:
    try:
        LEARNERS[loss].check(x, y, "support")
    except Exception as error:
        assert refused_naming(error, "support"), repr(error)


@EXAMPLES
@given(st.data(), st.booleans())
def test_learner_check_passes_well_formed_sets(data: st.DataObject, batched: bool) -> None:
    regression = data.draw(finite_sets((1,), batched))
    assert LEARNERS["mse"].check(regression, regression.clone(), "support") == (
        regression.shape[0] if batched else None
    )
    images = data.draw(finite_sets((1, 16, 16), batched))
    labels = torch.tensor(data.draw(st.lists(st.integers(0, 2), min_size=1))).long()
    labels = labels.repeat(images[..., 0, 0, 0].numel())[: images[..., 0, 0, 0].numel()]
    labels = labels.reshape(images.shape[: images.dim() - 3])
    LEARNERS["cross_entropy"].check(images, labels, "support")


def served(kind: Kind, input_shape: tuple[int, ...], ways: int) -> LoadedModel:
    """A model as the registry serves it, as far as turning request data into tensors needs one."""
    net = build_net({"name": "mlp", "sizes": [1, 8, ways]})
    learner = Learner(net, "mse" if kind == "regression" else "cross_entropy")
    return LoadedModel(
        id=1, name="m", version=1, card={}, learner=learner, params=dict(net.named_parameters()), kind=kind,
        ways=ways, input_shape=input_shape, inner=InnerLoop(), device=torch.device("cpu"),
    )  # fmt: skip


MODELS = [
    served("regression", (1,), 1),
    served("regression", (2,), 2),
    served("classification", (1, 4, 4), 3),
]
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=24,
)
"""Any JSON value (and NaN, infinities and integers past 64 bits, which Python's JSON also reads)."""


@EXAMPLES
@given(JSON, JSON, st.sampled_from(MODELS))
def test_request_data_becomes_tensors_or_is_refused_naming_the_field(
    x: Any, y: Any, model: LoadedModel
) -> None:
    for convert in (lambda: support_tensors(model, x, y, limit=8), lambda: query_tensor(model, x, limit=8)):
        try:
            inputs = convert()
        except ValueError as error:
            assert FIELD.fullmatch(str(error)), str(error)
        else:
            tensor = inputs[0] if isinstance(inputs, tuple) else inputs
            assert tensor.shape[1:] == model.input_shape and bool(torch.isfinite(tensor).all())


@EXAMPLES
@given(st.data(), st.sampled_from(MODELS))
def test_well_formed_request_data_becomes_tensors(data: st.DataObject, model: LoadedModel) -> None:
    size = torch.Size(model.input_shape).numel()
    numbers = st.floats(-1e3, 1e3, width=32)
    x = data.draw(st.lists(st.lists(numbers, min_size=size, max_size=size), min_size=1, max_size=8))
    x = [torch.tensor(example).reshape(model.input_shape).tolist() for example in x]
    if model.kind == "classification":
        y: list[Any] = data.draw(st.lists(st.sampled_from(["a", "b", 7]), min_size=len(x), max_size=len(x)))
    else:
        y = data.draw(st.lists(st.lists(numbers, min_size=model.ways, max_size=model.ways), min_size=len(x),
                               max_size=len(x)))  # fmt: skip
    inputs, targets, labels = support_tensors(model, x, y, limit=8)
    assert inputs.shape == (len(x), *model.input_shape)
    assert torch.equal(query_tensor(model, x, limit=8), inputs)
    assert (labels is None) == (model.kind == "regression") and targets.shape[0] == len(x)


@pytest.mark.parametrize("limit", [1, 3])
def test_more_examples_than_the_limit_are_refused_naming_x(limit: int) -> None:
    with pytest.raises(ValueError, match=rf"x: {limit + 1} examples; at most {limit}"):
        query_tensor(MODELS[0], [[0.0]] * (limit + 1), limit)


def test_a_string_beyond_ascii_is_refused_as_base64_naming_its_index() -> None:
    with pytest.raises(ValueError, match=r"x\[0\]: not valid base64"):
        query_tensor(MODELS[2], ["é"], limit=8)
