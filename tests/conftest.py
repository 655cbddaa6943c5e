"""Shared fixtures: small nets, seeded task batches, and a plain autograd reference for MAML."""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F
from fastapi import FastAPI
from PIL import Image, ImageDraw
from sqlalchemy import Engine
from torch import Tensor, nn
from torch.func import functional_call

from app.client import AsyncClient
from app.db.engine import make_engine
from app.db.migrate import migrate
from app.keys import ADMIN_KEY_FILE
from app.meta import Algorithm, InnerLoop, Learner, TaskBatch, build_net
from app.meta.flat import Flat
from app.meta.layers import BatchNorm2d
from app.meta.stacked import adapt_many, predict_batches
from app.meta.tasks.noise_images import noise_image_tasks
from app.meta.tasks.sinusoid import sinusoid_tasks
from tests.postgres import NO_DRIVER, PostgresServer, postgres_server, unavailable

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def predict_each(
    learner: Learner, base: dict[str, Tensor], changed: list[Flat], xs: list[Tensor], **options: Any
) -> list[Tensor]:
    """Each query set's outputs, cut from the batches ``predict_batches`` ran them in (padding dropped),
    to compare with the same set predicted alone."""
    outputs = [torch.empty(0)] * len(xs)
    for batch in predict_batches(learner, base, changed, xs, **options):
        for row, i in zip(batch.out.unbind(), batch.indices, strict=True):
            outputs[i] = row[: xs[i].shape[0]]
    return outputs


def signed_norm_weights(learner: Learner, params: dict[str, Tensor], generator: torch.Generator) -> None:
    """Draw the batch-norm weights in ``params`` from a normal distribution, so some are negative."""
    for name, module in learner.net.named_modules():
        if isinstance(module, BatchNorm2d):
            params[f"{name}.weight"] = torch.randn(module.weight.shape, generator=generator).to(
                params[f"{name}.weight"].device
            )


def assert_sessions_predict_as_each_alone(
    learner: Learner, params: dict[str, Tensor], supports: list[tuple[Tensor, Tensor]], queries: list[Tensor]
) -> None:
    """Sessions adapted to ``supports`` together, adapting every tensor or the head alone, answer
    ``queries`` together as each alone."""
    for adapts in ("all", "head"):
        inner = InnerLoop(1, 0.1, adapts=adapts)
        sessions = [a.changed for a in adapt_many(learner, params, supports, inner)]
        outputs = predict_each(learner, params, sessions, queries)
        for changed, x, out in zip(sessions, queries, outputs, strict=True):
            expected = learner.predict({**params, **changed.params()}, x)
            torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def reference_module(learner: Learner) -> nn.Module:
    """The same architecture from stock torch layers (native batch norm), for an independent reference."""
    config = learner.net.config
    if config["name"] == "mlp":
        sizes = config["sizes"]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes[:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers, nn.Linear(sizes[-2], sizes[-1]))
    layers, fan_in = [], config["channels"]
    for _ in range(4):
        layers += [
            nn.Conv2d(fan_in, config["hidden"], 3, padding=1),
            nn.BatchNorm2d(config["hidden"], track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        ]
        fan_in = config["hidden"]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(config["hidden"], config["ways"]))


def reference_meta_gradient(
    learner: Learner, params: dict[str, Tensor], batch: TaskBatch, steps: int, lr: float, first_order: bool
) -> list[Tensor]:
    """MAML's meta-gradient by a plain Python loop over tasks with torch.autograd.grad (the anchors' form)."""
    module = reference_module(learner).to(next(iter(params.values())).dtype)
    theta = list(params.values())
    names = list(module.state_dict())
    loss_fn = F.mse_loss if learner.loss == "mse" else F.cross_entropy

    def loss(weights: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(module, dict(zip(names, weights, strict=True)), (x,)), y)

    total = torch.zeros(())
    for sx, sy, qx, qy in (batch.task(t) for t in range(batch.tasks)):
        weights = theta
        for _ in range(steps):
            grads = torch.autograd.grad(loss(weights, sx, sy), weights, create_graph=not first_order)
            weights = [w - lr * g for w, g in zip(weights, grads, strict=True)]
        total = total + loss(weights, qx, qy)
    return list(torch.autograd.grad(total / batch.tasks, theta))


def relative_error(found: list[Tensor], expected: list[Tensor]) -> float:
    a = torch.cat([t.detach().flatten() for t in found])
    b = torch.cat([t.detach().flatten() for t in expected])
    return float((a - b).norm() / b.norm())


def leaf_params(learner: Learner, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    return {k: v.detach().to(dtype).requires_grad_() for k, v in learner.net.named_parameters()}


def meta_params(algorithm: Algorithm, learner: Learner) -> dict[str, Tensor]:
    """The algorithm's meta-parameters for the learner's net, as leaves that take gradients."""
    return {k: v.requires_grad_() for k, v in algorithm.init(leaf_params(learner)).items()}


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The file descriptors ``os.fsync`` is called on from now on (it still syncs them)."""
    synced: list[int] = []
    real_fsync = os.fsync

    def counted(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counted)
    return synced


MODELS = Path(__file__).resolve().parents[1] / "models"


def sinusoid_only(root: Path) -> Path:
    """A models folder under ``root`` holding a copy of the shipped sinusoid alone: a service on it starts
    in seconds, and nothing it does reaches the shipped files."""
    target = root / "models" / "sinusoid"
    target.mkdir(parents=True)
    for name in ("card.json", "weights.safetensors"):
        shutil.copy(MODELS / "sinusoid" / name, target)
    return root / "models"


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """The shipped sinusoid alone (modules that need more models override this)."""
    return sinusoid_only(tmp_path)


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture
def sinusoid_learner() -> Learner:
    torch.manual_seed(0)
    return Learner(build_net({"name": "mlp"}), "mse")


@pytest.fixture
def conv4_learner() -> Learner:
    torch.manual_seed(0)
    return Learner(build_net({"name": "conv4", "ways": 5, "hidden": 16}), "cross_entropy")


@pytest.fixture
def sinusoid_batch(generator: torch.Generator) -> TaskBatch:
    return sinusoid_tasks(generator, tasks=6)


@pytest.fixture
def image_batch(generator: torch.Generator) -> TaskBatch:
    return noise_image_tasks(generator, tasks=3, ways=5, shots=2, queries=3)


def as_dtype(batch: TaskBatch, dtype: torch.dtype) -> TaskBatch:
    return TaskBatch(*(t.to(dtype) if t.is_floating_point() else t for t in batch.tensors()))


@pytest.fixture(scope="session")
def glyphs_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache of the rendered glyphs family (about a minute to build) for the whole test session."""
    return tmp_path_factory.mktemp("glyphs-cache")


Colour = int | tuple[int, ...]


def drawing(
    index: int, variant: int = 0, ink: Colour = 0, paper: Colour = 255, mode: str = "L"
) -> Image.Image:
    """A 40x40 drawing of class ``index`` (a bar and a stroke), nudged by ``variant``."""
    image = Image.new(mode, (40, 40), paper)
    draw = ImageDraw.Draw(image)
    draw.rectangle((5 + variant, 5, 12 + variant + index, 30), fill=ink)
    draw.line((5, 35, 35, 5 + index), fill=ink, width=2)
    return image


def write_dataset(root: Path, classes: list[str], per_class: int = 3) -> Path:
    """``per_class`` PNGs in ``root/<class>`` for each class (a class may be ``alphabet/character``)."""
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for variant in range(per_class):
            drawing(index % 20, variant).save(root / name / f"{variant}.png")
    return root


# The HTTP API through its ASGI app, for test modules that define a ``service`` fixture (a started app).


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def admin_key(data_dir: Path) -> str | None:
    """The admin key a service's first start saved in ``data_dir``, if it has started there."""
    saved = data_dir / ADMIN_KEY_FILE
    return saved.read_text().strip() if saved.exists() else None


def http_to(app: FastAPI) -> httpx.AsyncClient:
    """An HTTP client of ``app`` that sends the admin key its start saved (none before it has started)."""
    key = admin_key(app.state.settings.data_dir)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://metaserve",
        headers={} if key is None else {"X-API-Key": key},
    )


@pytest.fixture
async def http(service: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with http_to(service) as client:
        yield client


@pytest.fixture
def client(http: httpx.AsyncClient) -> AsyncClient:
    return AsyncClient(http=http)


# A throwaway PostgreSQL server (tests/postgres.py), started once for the tests that ask for one.


@contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    """An engine on the database at ``url``, migrated to the newest schema first; disposed on leaving."""
    migrate(url)
    engine = make_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """The throwaway server; without PostgreSQL or psycopg the test skips, saying how to install them."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    pytest.importorskip("psycopg", reason=NO_DRIVER)
    with postgres_server() as server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """The URL of a new empty database on the throwaway server, for one test."""
    return postgres.new_database()
