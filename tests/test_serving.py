"""The serving core on the shipped models, a real SQLite file and real session files: the registry,
request data as tensors, adapted sessions (stored, cached, swept) and their predictions."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors.torch import load, load_file, save
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from torch import Tensor

from app.config import Settings
from app.db.engine import make_engine, make_session_factory
from app.db.migrate import migrate
from app.db.tables import AdaptedSession, Initialization, utc_now
from app.families.registry import build_family
from app.meta import InnerLoop
from app.meta.flat import rows_of
from app.meta.tasks.sinusoid import sinusoid_tasks
from app.serving import (
    NotFound,
    Registry,
    SessionRecord,
    SessionStore,
    predict,
    query_tensor,
    support_tensors,
)
from app.serving.errors import Conflict
from app.serving.predict import Answer, Query, answer_many
from app.serving.sessions import TOUCH_AT_MOST, _serialized

MODELS = Path(__file__).resolve().parents[1] / "models"
CPU = torch.device("cpu")
GREEK = ["alpha", "beta", "gamma", "delta", "epsilon"]
SINUSOID_BYTES = (1 * 40 + 40 + 40 * 40 + 40 + 40 * 1 + 1) * 4


def copy_model(source: str, target: Path, **card: Any) -> Path:
    """A shipped model's card (with ``card``'s fields replaced) and weights in ``target``."""
    target.mkdir(parents=True)
    shutil.copy(MODELS / source / "weights.safetensors", target)
    original = json.loads((MODELS / source / "card.json").read_text())
    (target / "card.json").write_text(json.dumps({**original, **card}))
    return target


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """The shipped sinusoid and glyphs, apart from any model still training in models/."""
    for name in ("sinusoid", "glyphs"):
        copy_model(name, tmp_path / "models" / name)
    return tmp_path / "models"


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    return Settings(models_dir=models_dir, data_dir=tmp_path / "data", max_support=20, max_query=20)


@pytest.fixture
def db(settings: Settings) -> Iterator[sessionmaker[Session]]:
    migrate(settings.database_url_resolved)
    engine = make_engine(settings.database_url_resolved)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def registry(settings: Settings, db: sessionmaker[Session]) -> Registry:
    return Registry.open(settings, db, CPU)


@pytest.fixture
def store(settings: Settings, db: sessionmaker[Session], registry: Registry) -> SessionStore:
    return SessionStore(settings, db, registry)


def sinusoid(
    seed: int, shots: int = 10, queries: int = 100
) -> tuple[list[float], list[float], Tensor, Tensor]:
    """A fresh sinusoid: support x and y as JSON lists, query x and y as tensors ``[N]``."""
    x, y, query_x, query_y = sinusoid_tasks(torch.Generator().manual_seed(seed), 1, shots, queries).task(0)
    return x[:, 0].tolist(), y[:, 0].tolist(), query_x[:, 0], query_y[:, 0]


def png(image: Tensor | Image.Image) -> str:
    """A base64 PNG; a ``[1, H, W]`` tensor (ink 1) is drawn dark on light, as a scan would be."""
    if isinstance(image, Tensor):
        image = Image.fromarray(((1 - image[0]) * 255).round().to(torch.uint8).numpy())
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def glyph_png_tasks(
    cache_dir: Path, seed: int, tasks: int = 4, queries: int = 4
) -> Iterator[tuple[list[str], list[str], list[str], list[str]]]:
    """5-way 1-shot meta-test glyph tasks as posted: support PNGs, their Greek labels (rotated per task),
    query PNGs (``queries`` per class) and the labels the queries should get."""
    family = build_family("glyphs", 0, cache_dir=cache_dir)
    generator = torch.Generator().manual_seed(seed)
    batch = family.sample(generator, "test", tasks=tasks, ways=5, shots=1, queries=queries)
    for task in range(batch.tasks):
        support_x, support_y, query_x, query_y = batch.task(task)
        names = GREEK[task:] + GREEK[:task]
        labels = [names[int(c)] for c in support_y]
        yield [png(i) for i in support_x], labels, [png(i) for i in query_x], [names[int(c)] for c in query_y]


def strokes(count: int, seed: int = 0) -> list[list[list[float]]]:
    """``count`` 28x28 images (no channel) of random bars, as nested lists."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(count, 28, 28)
    for image in images:
        top, left = torch.randint(2, 20, (2,), generator=generator).tolist()
        image[top : top + 6, left : left + 3] = 1
    return images.tolist()


def session_file(settings: Settings, record: SessionRecord) -> Path:
    return settings.data_dir / "sessions" / f"{record.id}.safetensors"


def rows(db: sessionmaker[Session]) -> set[tuple[str, int, bool]]:
    with db() as session:
        found = session.execute(
            select(Initialization.name, Initialization.version, Initialization.is_default)
        )
        return {(name, version, is_default) for name, version, is_default in found}


def test_the_registry_serves_finished_models_and_skips_unfinished_or_corrupt_ones(
    settings: Settings, db: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    card = json.loads((MODELS / "sinusoid" / "card.json").read_text())
    copy_model("sinusoid", settings.models_dir / "unfinished", name="unfinished",
               training={**card["training"], "complete": False})  # fmt: skip
    corrupt = copy_model("sinusoid", settings.models_dir / "corrupt", name="corrupt")
    weights = bytearray((corrupt / "weights.safetensors").read_bytes())
    weights[-1] ^= 0xFF
    (corrupt / "weights.safetensors").write_bytes(weights)
    with caplog.at_level(logging.WARNING, logger="app.serving.registry"):
        registry = Registry.open(settings, db, CPU)
    assert [m.ref for m in registry.models] == ["glyphs@1", "sinusoid@1"]
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert len(warnings) == 2
    assert "corrupt" in warnings[0] and "sha256 differs" in warnings[0]
    assert "unfinished" in warnings[1] and "training is not complete" in warnings[1]
    assert rows(db) == {("glyphs", 1, True), ("sinusoid", 1, True)}

    sine, glyphs = registry.get("sinusoid"), registry.get("glyphs")
    assert (sine.kind, sine.ways, sine.input_shape, sine.inner) == ("regression", 1, (1,), InnerLoop(1, 0.01))
    assert (glyphs.kind, glyphs.ways, glyphs.input_shape) == ("classification", 5, (1, 28, 28))
    assert glyphs.inner == InnerLoop(5, 0.4, "head")
    assert glyphs.card["sha256"] == json.loads((MODELS / "glyphs" / "card.json").read_text())["sha256"]
    assert all(t.device == CPU for t in glyphs.params.values())
    with pytest.raises(AttributeError):
        glyphs.version = 2  # type: ignore[misc]


def test_models_resolve_by_name_by_name_at_version_and_by_default(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    copy_model("sinusoid", settings.models_dir / "sinusoid-2", version=2)
    registry = Registry.open(settings, db, CPU)
    assert registry.get(None).ref == registry.get("sinusoid").ref == "sinusoid@2"
    assert registry.get("sinusoid@1").version == 1
    assert registry.get("glyphs").ref == registry.get("glyphs@1").ref == "glyphs@1"
    assert rows(db) == {("glyphs", 1, True), ("sinusoid", 1, False), ("sinusoid", 2, True)}
    ids = {m.ref: m.id for m in registry.models}

    pinned = Registry.open(settings.model_copy(update={"default_model": "sinusoid@1"}), db, CPU)
    assert pinned.get(None).ref == pinned.get("sinusoid").ref == "sinusoid@1"
    assert pinned.get("sinusoid@2").version == 2
    assert rows(db) == {("glyphs", 1, True), ("sinusoid", 1, True), ("sinusoid", 2, False)}
    assert {m.ref: m.id for m in pinned.models} == ids, "reopening updates the rows in place"
    assert Registry.open(settings, db, CPU).get("sinusoid").ref == "sinusoid@1", "the default is kept"


def test_a_promotion_reaches_every_registry_and_a_version_that_fails_to_verify_is_never_served(
    settings: Settings, db: sessionmaker[Session], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = Registry.open(settings, db, CPU), Registry.open(settings, db, CPU)
    published = copy_model("sinusoid", tmp_path / "published", version=2)
    corrupt = copy_model("sinusoid", tmp_path / "corrupt", version=3)
    (corrupt / "weights.safetensors").write_bytes(b"not the weights")
    model = first.get("sinusoid")

    def publish(directory: Path, version: int) -> None:
        card = json.loads((directory / "card.json").read_text())
        fields = {"algorithm": "maml", "family": "sinusoid", "net": card["net"], "sha256": card["sha256"]}
        with db.begin() as session:
            session.add(
                Initialization(name="sinusoid", version=version, card=card, path=str(directory), **fields)
            )

    publish(published, 2)
    publish(corrupt, 3)
    with caplog.at_level(logging.WARNING, logger="app.serving.registry"):
        assert [m.ref for m in first.sync()] == ["sinusoid@2"]
        assert first.sync() == [], "a version that failed is not tried again"
    assert sum("sha256 differs" in r.getMessage() for r in caplog.records) == 1
    assert first.get("sinusoid") is model, "a published version waits to be promoted"
    with pytest.raises(NotFound):
        first.promote("sinusoid", 3)

    first.promote("sinusoid", 2)
    assert first.get("sinusoid").ref == first.get(None).ref == "sinusoid@2"
    assert second.get("sinusoid").ref == "sinusoid@1"
    second.sync()
    assert second.get("sinusoid").ref == "sinusoid@2", "another process takes up the promotion"
    assert rows(db) >= {("sinusoid", 1, False), ("sinusoid", 2, True), ("sinusoid", 3, False)}
    publish(copy_model("sinusoid", tmp_path / "just-published", version=4), 4)
    assert second.promote("sinusoid", 4).ref == "sinusoid@4", "a version published since the last sync"


@pytest.mark.parametrize("ref", ["sine", "sinusoid@2", "sinusoid@latest", "glyphs@", "@1"])
def test_an_unknown_model_is_not_found_and_the_error_lists_the_loaded_ones(
    registry: Registry, ref: str
) -> None:
    with pytest.raises(NotFound) as error:
        registry.get(ref)
    assert str(error.value) == f"no model {ref!r}; the loaded models are: glyphs@1, sinusoid@1"


def test_a_default_model_that_is_not_loaded_stops_the_registry(
    settings: Settings, db: sessionmaker[Session]
) -> None:
    with pytest.raises(
        NotFound, match="no model 'glyphs-20way'; the loaded models are: glyphs@1, sinusoid@1"
    ):
        Registry.open(settings.model_copy(update={"default_model": "glyphs-20way"}), db, CPU)


def test_a_sinusoid_session_predicts_with_a_fifth_of_the_initializations_error(
    settings: Settings, registry: Registry, store: SessionStore
) -> None:
    model = registry.get("sinusoid")
    x, y, query_x, query_y = sinusoid(seed=11)
    record = store.create(model, x, y, steps=10)
    assert (record.model, record.steps, record.lr, record.support_size) == ("sinusoid@1", 10, 0.01, 10)
    assert record.label_map is None and 0 < record.adapt_seconds < 5
    assert record.loss_after < record.loss_before / 10
    assert record.created == record.last_used and record.expires - record.created == timedelta(days=1)

    _, params = store.get(record.id)
    queries = query_tensor(model, query_x.tolist(), 100)
    adapted = torch.tensor(predict(model, params, queries))
    initial = torch.tensor(predict(model, model.params, queries))
    adapted_mse, initial_mse = (adapted - query_y).square().mean(), (initial - query_y).square().mean()
    assert adapted_mse * 5 <= initial_mse, (float(adapted_mse), float(initial_mse))
    # MAML adapts every tensor, so the session keeps all of them.
    assert set(load_file(session_file(settings, record))) == {
        k for k, _ in model.learner.net.named_parameters()
    }


def test_regression_examples_may_be_numbers_or_one_element_lists(registry: Registry) -> None:
    model = registry.get("sinusoid")
    bare, bare_targets, _ = support_tensors(model, [0.5, -1], [2, 3.5], limit=10)
    listed, listed_targets, _ = support_tensors(model, [[0.5], [-1.0]], [[2.0], [3.5]], limit=10)
    assert torch.equal(bare, listed) and torch.equal(bare_targets, listed_targets)
    assert bare.shape == bare_targets.shape == (2, 1) and bare.dtype == torch.float32


def test_a_restarted_store_gives_bit_identical_predictions(
    settings: Settings, registry: Registry, store: SessionStore
) -> None:
    model = registry.get("sinusoid")
    x, y, query_x, _ = sinusoid(seed=12)
    record = store.create(model, x, y)
    queries = query_tensor(model, query_x.tolist(), 100)
    before = predict(model, store.get(record.id)[1], queries)

    engine = make_engine(settings.database_url_resolved)
    factory = make_session_factory(engine)
    restarted = SessionStore(settings, factory, Registry.open(settings, factory, CPU))
    found, params = restarted.get(record.id)
    engine.dispose()
    assert predict(restarted.registry.get("sinusoid"), params, queries) == before
    device = restarted.cache.stats()["device"]
    assert (device.hits, device.misses) == (0, 1)
    assert (found.id, found.model, found.loss_after, found.created) == (
        record.id, record.model, record.loss_after, record.created)  # fmt: skip
    assert found.expires - found.last_used == timedelta(days=1)


def test_glyph_sessions_from_pngs_label_queries_with_the_posted_labels(
    glyphs_cache: Path, registry: Registry, store: SessionStore
) -> None:
    model = registry.get("glyphs")
    right = total = 0
    for support, labels, queries, truths in glyph_png_tasks(glyphs_cache, seed=5):
        names = list(dict.fromkeys(labels))
        record = store.create(model, support, labels)
        assert record.label_map == names
        session, params = store.get(record.id)
        answers = predict(model, params, query_tensor(model, queries, 20), session.label_map)
        for answer, truth in zip(answers, truths, strict=True):
            assert set(answer["probabilities"]) == set(names)
            assert sum(answer["probabilities"].values()) == pytest.approx(1, abs=1e-5)
            assert answer["label"] == max(answer["probabilities"], key=answer["probabilities"].get)
            right += answer["label"] == truth
            total += 1
    assert right / total >= 0.8, right


def test_an_anil_session_stores_only_the_head_in_a_few_kilobytes(
    settings: Settings, registry: Registry, store: SessionStore
) -> None:
    model = registry.get("glyphs")
    record = store.create(model, strokes(5), GREEK)
    stored = load_file(session_file(settings, record))
    assert set(stored) == {"head.weight", "head.bias"}
    assert session_file(settings, record).stat().st_size < 2048
    _, params = store.get(record.id)
    assert params["body.0.weight"] is model.params["body.0.weight"]
    assert torch.equal(params["head.weight"], stored["head.weight"])
    assert not torch.equal(params["head.weight"], model.params["head.weight"])


def test_a_session_with_fewer_labels_than_ways_predicts_among_its_own_labels_of_any_type(
    registry: Registry, store: SessionStore
) -> None:
    model = registry.get("glyphs")
    labels: list[str | int] = ["cat", 7, "dog", 7, "cat", "dog"]
    record = store.create(model, strokes(6), labels)
    assert record.label_map == ["cat", 7, "dog"]
    session, params = store.get(record.id)
    assert session.label_map == ["cat", 7, "dog"], "label types survive the database"
    answers = predict(model, params, query_tensor(model, strokes(4, seed=1), 20), session.label_map)
    assert all(list(a["probabilities"]) == ["cat", 7, "dog"] for a in answers)
    assert all(sum(a["probabilities"].values()) == pytest.approx(1, abs=1e-5) for a in answers)


def test_sessions_of_two_three_and_five_labels_predicted_in_one_batch_answer_as_each_alone(
    registry: Registry, store: SessionStore
) -> None:
    model = registry.get("glyphs")
    records = [store.create(model, strokes(n, seed=n), GREEK[:n]) for n in (2, 3, 5, 3)]
    # Four sets of two queries: one batch on a CPU too, softmaxes of three widths.
    queries = [Query(strokes(2, seed=10 + i), session_id=r.id) for i, r in enumerate(records)]
    together = answer_many(registry, store, queries)
    for query, record, answer in zip(queries, records, together, strict=True):
        session, params = store.get(record.id)
        alone = predict(model, params, query_tensor(model, query.x, 20), session.label_map)
        assert isinstance(answer, Answer) and len(answer.predictions) == len(alone)
        for found, expected in zip(answer.predictions, alone, strict=True):
            assert list(found["probabilities"]) == GREEK[: len(record.label_map or [])]
            assert found["label"] == expected["label"]
            assert found["probabilities"] == pytest.approx(expected["probabilities"], rel=1e-4, abs=1e-6)


def test_a_session_read_back_from_its_file_batches_with_one_fresh_from_adaptation(
    registry: Registry, store: SessionStore
) -> None:
    model = registry.get("sinusoid")
    records = [store.create(model, *sinusoid(seed)[:2]) for seed in (1, 2)]
    store.cache.discard(records[0].id)  # read from its file, laid out as adaptation lays it out
    queries = [Query([-2.0, 0.5, 3.0], session_id=r.id) for r in records]
    together = answer_many(registry, store, queries)
    for query, record, answer in zip(queries, records, together, strict=True):
        _, params = store.get(record.id)
        alone = predict(model, params, query_tensor(model, query.x, 20))
        assert isinstance(answer, Answer) and answer.predictions == pytest.approx(alone, rel=1e-5)


def test_the_initialization_predicts_without_a_session_naming_head_classes_by_number(
    registry: Registry,
) -> None:
    model = registry.get("glyphs")
    answers = predict(model, model.params, query_tensor(model, strokes(3), 20))
    assert len(answers) == 3
    assert all(list(a["probabilities"]) == [0, 1, 2, 3, 4] and a["label"] in range(5) for a in answers)


def test_the_cache_evicts_the_least_recently_used_session_and_reloads_it_from_disk_identically(
    settings: Settings, db: sessionmaker[Session], registry: Registry
) -> None:
    store = SessionStore(
        settings.model_copy(update={"session_cache_bytes": SINUSOID_BYTES + 100, "session_host_bytes": 0}),
        db,
        registry,
    )
    model = registry.get("sinusoid")
    first, second = store.create(model, *sinusoid(1)[:2]), store.create(model, *sinusoid(2)[:2])
    device = store.cache.stats()["device"]
    assert (device.evictions, device.size_bytes, len(store.cache)) == (1, SINUSOID_BYTES, 1)
    assert second.id in store.cache and first.id not in store.cache

    queries = query_tensor(model, sinusoid(1)[2].tolist(), 100)
    reloaded = store.get(first.id)[1]  # a miss: read from disk, evicting the second session
    device = store.cache.stats()["device"]
    assert (device.hits, device.misses, device.evictions) == (0, 1, 2)
    cached = store.get(first.id)[1]
    device = store.cache.stats()["device"]
    assert (device.hits, device.misses) == (1, 1)
    on_disk = load_file(session_file(settings, first))
    assert all(torch.equal(reloaded[k], on_disk[k]) and torch.equal(cached[k], on_disk[k]) for k in on_disk)
    assert predict(model, reloaded, queries) == predict(model, cached, queries)


def test_expired_sessions_are_refused_then_swept_with_their_files(
    settings: Settings, db: sessionmaker[Session], registry: Registry, store: SessionStore
) -> None:
    model = registry.get("sinusoid")
    old, fresh = store.create(model, *sinusoid(1)[:2]), store.create(model, *sinusoid(2)[:2])
    with db.begin() as session:
        row = session.get(AdaptedSession, old.id)
        assert row is not None
        row.expires = utc_now() - timedelta(seconds=1)
    with pytest.raises(NotFound, match="expired"):
        store.get(old.id)
    assert [r.id for r in store.list()] == [fresh.id]

    assert store.sweep_expired() == 1
    assert not session_file(settings, old).exists() and old.id not in store.cache
    assert session_file(settings, fresh).exists() and store.get(fresh.id)[0].id == fresh.id
    assert store.sweep_expired(utc_now() + timedelta(days=1, seconds=1)) == 1
    assert list(store.directory.iterdir()) == [] and len(store.cache) == 0


@pytest.mark.parametrize(("durable", "count"), [(True, 2), (False, 0)])
def test_session_files_are_fsynced_when_the_settings_ask_for_durable_writes(
    settings: Settings,
    db: sessionmaker[Session],
    registry: Registry,
    fsyncs: list[int],
    durable: bool,
    count: int,
) -> None:
    store = SessionStore(settings.model_copy(update={"durable_writes": durable}), db, registry)
    record = store.create(registry.get("sinusoid"), *sinusoid(4)[:2])
    assert len(fsyncs) == count and session_file(settings, record).exists()


def test_a_use_is_written_once_the_recorded_one_is_a_second_old(
    db: sessionmaker[Session], registry: Registry, store: SessionStore
) -> None:
    record = store.create(registry.get("sinusoid"), *sinusoid(3)[:2])
    assert store.get(record.id)[0].last_used == record.last_used, "a use just after another is not written"
    stale = record.last_used - TOUCH_AT_MOST
    with db.begin() as session:
        row = session.get(AdaptedSession, record.id)
        assert row is not None
        row.last_used = stale
    touched = store.get(record.id)[0]
    assert touched.last_used > record.last_used and touched.expires == touched.last_used + timedelta(days=1)
    assert store.get(record.id)[0].last_used == touched.last_used


def test_a_session_file_of_other_tensors_fails_its_session_only(
    store: SessionStore, settings: Settings
) -> None:
    model = store.registry.get("sinusoid")
    foreign, kept = store.create(model, *sinusoid(1)[:2]), store.create(model, *sinusoid(2)[:2])
    session_file(settings, foreign).write_bytes(save({"head.weight": torch.zeros(3, 3)}))
    store.cache.discard(foreign.id)
    refused, served = store.open_many([foreign.id, kept.id])
    assert isinstance(refused, Conflict) and foreign.id in str(refused)
    assert not isinstance(served, Exception) and served.record.id == kept.id


def test_session_files_without_a_row_are_swept_once_old_enough(
    settings: Settings, store: SessionStore
) -> None:
    kept = store.create(store.registry.get("sinusoid"), *sinusoid(1)[:2])
    orphan = store.directory / "orphan.safetensors"
    orphan.write_bytes(session_file(settings, kept).read_bytes())
    partial = store.directory / ".crashed.safetensors.x1y2.partial"
    partial.write_bytes(b"half a file")
    assert store.sweep_orphans() == 0, "a young file may belong to a session being created"

    an_hour_ago = time.time() - 3600
    for path in store.directory.iterdir():
        os.utime(path, (an_hour_ago, an_hour_ago))
    assert store.sweep_orphans() == 2
    assert list(store.directory.iterdir()) == [session_file(settings, kept)]


def test_a_deleted_session_leaves_no_row_file_or_cache_entry(
    settings: Settings, db: sessionmaker[Session], store: SessionStore
) -> None:
    record = store.create(store.registry.get("sinusoid"), *sinusoid(1)[:2])
    store.delete(record.id)
    with db() as session:
        assert session.get(AdaptedSession, record.id) is None
    assert not session_file(settings, record).exists() and record.id not in store.cache
    for call in (store.get, store.delete):
        with pytest.raises(NotFound, match=f"no session '{record.id}'"):
            call(record.id)


def test_a_session_of_a_model_no_longer_loaded_is_not_found(
    settings: Settings, db: sessionmaker[Session], store: SessionStore
) -> None:
    record = store.create(store.registry.get("sinusoid"), *sinusoid(1)[:2])
    shutil.rmtree(settings.models_dir / "sinusoid")
    glyphs_only = settings.model_copy(update={"default_model": "glyphs"})
    restarted = SessionStore(glyphs_only, db, Registry.open(glyphs_only, db, CPU))
    with pytest.raises(
        NotFound, match=f"^session '{record.id}' was adapted from sinusoid@1, which is not loaded$"
    ):
        restarted.get(record.id)


def test_sessions_are_listed_newest_first_a_page_at_a_time(store: SessionStore) -> None:
    model = store.registry.get("sinusoid")
    first, second, third = (store.create(model, *sinusoid(seed)[:2]) for seed in range(3))
    assert store.list(page=1, size=2) == [third, second]
    assert store.list(page=2, size=2) == [first]
    assert store.list(page=3, size=2) == []
    with pytest.raises(ValueError, match=r"^page: "):
        store.list(page=0)
    with pytest.raises(ValueError, match=r"^size: "):
        store.list(size=1001)


GLYPH = [[0.0] * 28 for _ in range(28)]
GLYPH[10][10] = 1.0


def broken_png() -> str:
    whole = base64.b64decode(png(Image.new("L", (28, 28), 255)))
    return base64.b64encode(whole[: len(whole) // 2]).decode()


BAD_SUPPORT_SETS = {
    "x not a list": ("sinusoid", {"a": 1}, [], r"^x: must be a list of examples; got dict"),
    "empty": ("sinusoid", [], [], r"^x: is empty; give at least one example"),
    "too many": ("sinusoid", [1.0] * 21, [0.0] * 21, r"^x: 21 examples; at most 20 are allowed"),
    "y not one per x": ("sinusoid", [1.0, 2.0], [1.0], r"^y: 1 targets for 2 examples in x"),
    "wrong shape": ("sinusoid", [[1.0, 2.0]], [1.0], r"^x\[0\]: expected shape \(1,\), got \(2,\)"),
    "ragged": ("glyphs", [[[0.0] * 28] * 27 + [[0.0]]], ["a"], r"^x\[0\]: nested lists of unequal lengths"),
    "not numbers": ("sinusoid", [1.0, [None]], [1.0, 2.0], r"^x\[1\]: expected numbers only"),
    "bool input": ("sinusoid", [1.0, True], [1.0, 2.0], r"^x\[1\]: expected a number or nested lists"),
    "bool pixel": ("glyphs", [[[0.0] * 27 + [False]] * 28], ["a"], r"^x\[0\]: expected numbers only"),
    "bool target": ("sinusoid", [1.0, 2.0], [[False], 2.0], r"^y\[0\]: expected numbers only"),
    "nan input": ("sinusoid", [1.0, float("nan")], [1.0, 2.0], r"^x\[1\]: holds non-finite values"),
    "inf target": ("sinusoid", [1.0, 2.0], [1.0, float("inf")], r"^y\[1\]: holds non-finite values"),
    "beyond float32": ("sinusoid", [1e39], [1.0], r"^x\[0\]: holds non-finite values"),
    "string target": ("sinusoid", [1.0], ["high"], r"^y\[0\]: this model is a regressor"),
    "wrong target width": ("sinusoid", [1.0], [[1.0, 2.0]], r"^y\[0\]: expected shape \(1,\), got \(2,\)"),
    "image for numbers": ("sinusoid", ["iVBORw0KGgo="], [1.0], r"^x\[0\]: a string is read as a base64 PNG"),
    "float label": ("glyphs", [GLYPH, GLYPH], ["a", 0.5], r"^y\[1\]: this model is a classifier"),
    "bool label": ("glyphs", [GLYPH], [True], r"^y\[0\]: this model is a classifier"),
    "labels that read alike": (
        "glyphs",
        [GLYPH, GLYPH],
        [1, "1"],
        r"^y\[1\]: labels 1 and '1' read the same",
    ),
    "more labels than ways": ("glyphs", [GLYPH] * 6, list(range(6)), r"^y: more than 5 distinct labels"),
    "image too small": (
        "glyphs",
        [GLYPH[1:]],
        ["a"],
        r"^x\[0\]: expected shape \(1, 28, 28\), got \(27, 28\)",
    ),
    "not base64": ("glyphs", [GLYPH, "no*base64"], ["a", "b"], r"^x\[1\]: not valid base64"),
    "not a png": (
        "glyphs",
        [GLYPH, "R0lGODlhAQABAAAAACw="],
        ["a", "b"],
        r"^x\[1\]: not a readable PNG image",
    ),
    "truncated png": ("glyphs", [broken_png()], ["a"], r"^x\[0\]: not a readable PNG image"),
}


@pytest.mark.parametrize(("model", "x", "y", "message"), BAD_SUPPORT_SETS.values(), ids=BAD_SUPPORT_SETS)
def test_a_bad_support_set_is_refused_naming_the_field_and_writing_nothing(
    store: SessionStore, model: str, x: Any, y: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.create(store.registry.get(model), x, y)
    assert list(store.directory.iterdir()) == []


def test_numbers_in_any_accepted_form_give_the_same_tensors(registry: Registry) -> None:
    sinusoid_model, glyphs_model = registry.get("sinusoid"), registry.get("glyphs")
    flat = query_tensor(sinusoid_model, [1, 2.5, -3], 20)
    assert flat.dtype == torch.float32 and flat.tolist() == [[1.0], [2.5], [-3.0]]
    assert torch.equal(query_tensor(sinusoid_model, [[1], 2.5, [-3.0]], 20), flat)
    images = [GLYPH, [GLYPH]]  # with and without the channel
    stacked = query_tensor(glyphs_model, images, 20)
    assert stacked.shape == (2, 1, 28, 28) and torch.equal(stacked[0], stacked[1])
    assert torch.equal(query_tensor(glyphs_model, [GLYPH, [GLYPH]][:1] * 2, 20), stacked)


def test_an_image_too_large_to_decode_safely_is_refused_before_decoding(registry: Registry) -> None:
    huge = png(Image.new("L", (5000, 4000), 255))
    with pytest.raises(ValueError, match=r"^x\[0\]: image of 5000x4000 pixels; at most 16777216$"):
        query_tensor(registry.get("glyphs"), [huge], 20)


@pytest.mark.parametrize(
    ("steps", "lr", "message"),
    [(0, None, "^steps: "), (101, None, "^steps: "), (True, None, "^steps: "), (2.5, None, "^steps: "),
     (None, 0.0, "^lr: "), (None, 10.5, "^lr: "), (None, float("nan"), "^lr: "), (None, "fast", "^lr: ")],
)  # fmt: skip
def test_inner_steps_and_learning_rates_outside_the_limits_are_refused(
    store: SessionStore, steps: Any, lr: Any, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.create(store.registry.get("sinusoid"), [1.0], [1.0], steps=steps, lr=lr)


@pytest.mark.parametrize(
    ("x", "message"),
    [
        ([], r"^x: is empty"),
        ([1.0] * 21, r"^x: 21 examples; at most 20"),
        ([[1.0, 2.0]], r"^x\[0\]: expected"),
    ],
)
def test_bad_queries_are_refused_naming_the_field(registry: Registry, x: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        query_tensor(registry.get("sinusoid"), x, 20)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_session_files_are_the_bytes_safetensors_torch_writes(dtype: torch.dtype) -> None:
    tensors = {"head.weight": torch.randn(5, 64).to(dtype), "head.bias": torch.randn(5).to(dtype)}
    row = rows_of({k: torch.stack([v, v]) for k, v in tensors.items()}, list(tensors))[1]
    written = _serialized(row.tensor, row.layout)
    assert written == save(tensors)
    assert all(torch.equal(v, tensors[k]) for k, v in load(written).items())


@pytest.mark.parametrize("name", ["sinusoid", "glyphs"])
def test_predictions_that_overflow_are_refused_naming_x(registry: Registry, name: str) -> None:
    model = registry.get(name)
    huge = torch.full((2, *model.input_shape), 3e38)
    with pytest.raises(ValueError, match=r"^x: the predictions are not finite"):
        predict(model, model.params, huge)
