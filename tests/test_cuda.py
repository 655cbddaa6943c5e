"""On a GPU the engine batches every net (convolutions included) and stays exact; skipped without CUDA."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from app.meta import ALGORITHMS, InnerLoop, Learner, TaskBatch, adapt, build_algorithm, vectorizes
from app.meta.stacked import adapt_many
from app.serving.sessions import _on_host
from tests.conftest import (
    assert_sessions_predict_as_each_alone,
    leaf_params,
    meta_params,
    predict_each,
    reference_meta_gradient,
    relative_error,
    requires_cuda,
    signed_norm_weights,
)

pytestmark = [requires_cuda, pytest.mark.cuda]


@pytest.fixture(autouse=True)
def full_float32() -> Iterator[None]:
    """TF32 convolutions and matmuls (cuDNN's default) round to 10 mantissa bits: compare in true float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_gpu_batched_meta_gradients_match_cpu_loop(
    name: str, conv4_learner: Learner, image_batch: TaskBatch
) -> None:
    algorithm = build_algorithm(name, InnerLoop(2, 0.1))
    cpu = meta_params(algorithm, conv4_learner)
    gpu = {k: v.detach().cuda().requires_grad_() for k, v in cpu.items()}
    assert vectorizes(conv4_learner.net, torch.device("cuda"))
    on_gpu, _ = algorithm.meta_gradients(conv4_learner, gpu, image_batch.to("cuda"))
    on_cpu, _ = algorithm.meta_gradients(conv4_learner, cpu, image_batch, "loop")
    assert relative_error([g.cpu() for g in on_gpu.values()], list(on_cpu.values())) < 1e-4


def test_gpu_second_order_conv4_matches_autograd_loop_in_float64(
    conv4_learner: Learner, image_batch: TaskBatch
) -> None:
    params = leaf_params(conv4_learner, torch.float64)
    batch = TaskBatch(*(t.double() if t.is_floating_point() else t for t in image_batch.tensors()))
    gpu = {k: v.detach().cuda().requires_grad_() for k, v in params.items()}
    maml = build_algorithm("maml", InnerLoop(1, 0.4))
    found, _ = maml.meta_gradients(conv4_learner, gpu, batch.to("cuda"))
    expected = reference_meta_gradient(conv4_learner, params, batch, 1, 0.4, first_order=False)
    assert relative_error([g.cpu() for g in found.values()], expected) < 1e-10


def test_gpu_compiled_adaptation_matches_eager(sinusoid_learner: Learner, sinusoid_batch: TaskBatch) -> None:
    params = {k: v.detach().cuda() for k, v in sinusoid_learner.net.named_parameters()}
    x, y, _, _ = sinusoid_batch.to("cuda").task(0)
    eager = adapt(sinusoid_learner, params, x, y, InnerLoop(5, 0.01))
    compiled = adapt(sinusoid_learner, params, x, y, InnerLoop(5, 0.01), compiled=True)
    assert all(torch.allclose(eager[k], compiled[k], rtol=1e-4, atol=1e-5) for k in params)


def test_gpu_batched_predictions_reach_the_host_equal_to_each_alone(
    sinusoid_learner: Learner, generator: torch.Generator
) -> None:
    params = {k: v.detach().cuda() for k, v in sinusoid_learner.net.named_parameters()}
    supports = [(torch.randn(n, 1, generator=generator).cuda(), torch.randn(n, 1, generator=generator).cuda())
                for n in (5, 5, 7)]  # fmt: skip
    sessions = [a.changed for a in adapt_many(sinusoid_learner, params, supports, InnerLoop(1, 0.01))]
    queries = [torch.randn(n, 1, generator=generator).cuda() for n in (3, 100, 1)]
    outputs = predict_each(sinusoid_learner, params, sessions, queries, to=torch.device("cpu"))
    for changed, x, out in zip(sessions, queries, outputs, strict=True):
        assert out.device.type == "cpu"
        expected = sinusoid_learner.predict({**params, **changed.params()}, x).cpu()
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)  # CUDA rounds stacked matmuls apart


def test_gpu_conv_sessions_predict_together_as_each_alone_with_norm_weights_of_either_sign(
    conv4_learner: Learner, generator: torch.Generator
) -> None:
    params = {k: v.detach().cuda() for k, v in conv4_learner.net.named_parameters()}
    signed_norm_weights(conv4_learner, params, generator)  # negative ones negate their channels' filters
    images = [torch.randn(n, 1, 28, 28, generator=generator).cuda() for n in (5, 5, 5, 5, 3, 3, 3, 3)]
    labels = [torch.randint(0, 5, (5,), generator=generator).cuda() for _ in range(4)]
    supports, queries = list(zip(images[:4], labels, strict=True)), images[4:]
    assert_sessions_predict_as_each_alone(conv4_learner, params, supports, queries)


def test_gpu_sessions_reach_the_host_for_their_files_in_one_copy_equal_to_each_alone(
    sinusoid_learner: Learner, generator: torch.Generator
) -> None:
    params = {k: v.detach().cuda() for k, v in sinusoid_learner.net.named_parameters()}
    supports = [(torch.randn(5, 1, generator=generator).cuda(), torch.randn(5, 1, generator=generator).cuda())
                for _ in range(3)]  # fmt: skip
    tensors = [a.changed.tensor for a in adapt_many(sinusoid_learner, params, supports, InnerLoop(1, 0.01))]
    hosts = _on_host(tensors)
    assert all(
        h.device.type == "cpu" and torch.equal(h, t.cpu()) for h, t in zip(hosts, tensors, strict=True)
    )
