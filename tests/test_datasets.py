"""Datasets over HTTP through the ASGI app, on real files: npz (classification and regression), CSV and an
Omniglot-layout zip are stored as the family training builds, read, listed and deleted; every bad upload is
refused with its field and reason and leaves no file and no row behind."""

from __future__ import annotations

import io
import secrets
import stat
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from app.api.schemas import Dataset
from app.client import AsyncClient, MetaserveError
from app.config import Settings
from app.datasets import DatasetStore
from app.db.engine import make_engine, make_session_factory
from app.db.tables import Job
from app.families.registry import build_family
from app.main import create_app
from tests.conftest import sinusoid_only, write_dataset
from tests.test_arrays_family import class_npz, write_csv
from tests.test_folder_family import alphabet_classes

UPLOAD_LIMIT = 300_000
UNPACKED_LIMIT = 5_000_000
pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
async def service(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FastAPI]:
    """One started service for the module, serving the sinusoid only, with small upload limits."""
    root = tmp_path_factory.mktemp("datasets")
    limits = {"max_upload_bytes": UPLOAD_LIMIT, "max_unpacked_bytes": UNPACKED_LIMIT}
    app = create_app(Settings(data_dir=root / "data", models_dir=sinusoid_only(root), **limits))
    async with app.router.lifespan_context(app):
        yield app


def stored(app: FastAPI) -> tuple[set[str], set[str]]:
    """What the data directory's datasets folder holds, and the ids of the dataset rows."""
    store: DatasetStore = app.state.datasets
    return {p.name for p in store.directory.iterdir()}, {row.id for row in store.list()}


def assert_builds_as_the_row_says(app: FastAPI, dataset: Dataset) -> None:
    """A job worker's view: the row's family and path build the family the upload described."""
    row = app.state.datasets.get(dataset.dataset_id)
    family = build_family(row.details["family"], 7, data=app.state.settings.data_dir / row.path)
    assert (family.kind, list(family.input_shape)) == (dataset.kind, dataset.details["input_shape"])


def npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npz_compressed(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def packed(members: dict[str, bytes] | dict[str | zipfile.ZipInfo, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def omniglot(root: Path, alphabets: int = 3, characters: int = 5) -> dict[str, bytes]:
    """Omniglot's zip layout, ``images_background/alphabet/character/*.png``, two drawings a character."""
    write_dataset(root / "images_background", alphabet_classes(alphabets, characters), per_class=2)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def labelled(classes: int, per_class: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(classes)
    return {"x": rng.normal(size=(classes * per_class, 4)), "y": np.repeat(np.arange(classes), per_class)}


async def test_an_npz_of_labelled_arrays_is_stored_with_its_splits_and_builds_as_its_row_says(
    client: AsyncClient, service: FastAPI, tmp_path: Path
) -> None:
    dataset = await client.upload_dataset(
        class_npz(tmp_path / "digits.npz", classes=50, per_class=3), "digits"
    )
    assert (dataset.name, dataset.kind, dataset.format) == ("digits", "classification", "npz")
    assert (dataset.examples, dataset.classes) == (150, 50)
    assert dataset.size_bytes == (tmp_path / "digits.npz").stat().st_size
    assert dataset.details["family"] == "arrays" and dataset.details["input_shape"] == [1, 4, 4]
    assert dataset.details["classes"] == {"train": 35, "val": 5, "test": 10}
    assert dataset.details["checked"] == {"seed": 0, "ways": 5, "shots": 1, "queries": 1}
    assert len(dataset.dataset_id) >= 22
    assert_builds_as_the_row_says(service, dataset)
    assert await client.dataset(dataset.dataset_id) == dataset


async def test_a_regression_npz_is_stored_with_its_tasks_per_split(
    client: AsyncClient, service: FastAPI
) -> None:
    x = np.linspace(-1, 1, 40)[:, None]
    arrays = npz(x=x, y=np.sin(3 * x[:, 0]), task=np.repeat(np.arange(10), 4))
    dataset = await client.upload_dataset(arrays, "waves", format="npz", shots=2, queries=2)
    assert (dataset.kind, dataset.classes, dataset.examples) == ("regression", None, 40)
    assert dataset.details["tasks"] == {"train": 7, "val": 1, "test": 2}
    assert_builds_as_the_row_says(service, dataset)


async def test_a_csv_with_string_labels_takes_its_format_from_the_file_name(
    client: AsyncClient, service: FastAPI, tmp_path: Path
) -> None:
    rows = [[i % 7, i / 10, f"class{i % 50:02d}"] for i in range(100)]
    dataset = await client.upload_dataset(write_csv(tmp_path / "shapes.CSV", ["a", "b", "y"], rows), "shapes")
    assert (dataset.format, dataset.kind, dataset.classes, dataset.details["input_shape"]) == (
        "csv", "classification", 50, [2])  # fmt: skip
    assert_builds_as_the_row_says(service, dataset)


async def test_an_omniglot_zip_is_unwrapped_split_by_alphabet_and_stored_as_images(
    client: AsyncClient, service: FastAPI, tmp_path: Path
) -> None:
    members = {**omniglot(tmp_path), "__MACOSX/images_background/._alphabet0": b"\0\5\26\7"}
    dataset = await client.upload_dataset(packed(members), "omniglot", format="zip")
    assert (dataset.format, dataset.kind, dataset.examples, dataset.classes) == (
        "zip",
        "classification",
        30,
        15,
    )
    assert dataset.details["layout"] == "alphabet/character" and dataset.details["input_shape"] == [1, 28, 28]
    assert dataset.details["classes"] == {"train": 5, "val": 5, "test": 5}
    assert dataset.size_bytes == sum(len(data) for name, data in members.items() if name.endswith(".png"))
    assert_builds_as_the_row_says(service, dataset)
    row = service.state.datasets.get(dataset.dataset_id)
    assert sorted(p.name for p in (service.state.settings.data_dir / row.path).iterdir()) == [
        "alphabet0", "alphabet1", "alphabet2"]  # fmt: skip


async def test_datasets_are_listed_newest_first_and_deleted_with_their_files(
    client: AsyncClient, service: FastAPI
) -> None:
    first = await client.upload_dataset(npz(**labelled(50)), "first", format="npz")
    second = await client.upload_dataset(npz(**labelled(50)), "second", format="npz")
    listed = [d.dataset_id for d in await client.datasets()]
    assert listed.index(second.dataset_id) < listed.index(first.dataset_id)

    await client.delete_dataset(first.dataset_id)
    files, rows = stored(service)
    assert first.dataset_id not in files | rows and second.dataset_id in files & rows
    for missing in (client.dataset(first.dataset_id), client.delete_dataset(first.dataset_id)):
        with pytest.raises(MetaserveError) as error:
            await missing
        assert error.value.status == 404 and first.dataset_id in str(error.value.detail)


async def test_a_dataset_is_not_deleted_while_a_queued_job_reads_it_and_is_once_the_job_finished(
    client: AsyncClient, service: FastAPI
) -> None:
    dataset = await client.upload_dataset(npz(**labelled(50)), "busy", format="npz")
    engine = make_engine(service.state.settings.database_url_resolved)
    job_id = secrets.token_urlsafe(8)
    try:
        with make_session_factory(engine).begin() as db:
            db.add(Job(id=job_id, spec={"family": "arrays"}, state="queued", dataset_id=dataset.dataset_id))
        with pytest.raises(MetaserveError) as error:
            await client.delete_dataset(dataset.dataset_id)
        assert (
            error.value.status == 409
            and job_id in error.value.detail
            and "queued or running" in error.value.detail
        )
        assert dataset.dataset_id in set.intersection(*stored(service))

        with make_session_factory(engine).begin() as db:
            db.get_one(Job, job_id).state = "succeeded"
        await client.delete_dataset(dataset.dataset_id)
        with make_session_factory(engine)() as db:
            assert db.scalar(select(Job.dataset_id).where(Job.id == job_id)) is None
    finally:
        engine.dispose()
    assert dataset.dataset_id not in set.union(*stored(service))


Upload = Callable[[Path], tuple[str, bytes]]


def linked(tmp: Path) -> tuple[str, bytes]:
    """An Omniglot zip with a symbolic link among the images."""
    link = zipfile.ZipInfo("images_background/alphabet0/character0/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return "link.zip", packed({**omniglot(tmp), link: b"/etc/passwd"})


def undecodable(tmp: Path) -> tuple[str, bytes]:
    """An Omniglot zip with a file that is no image among the PNGs."""
    return "bad.zip", packed({**omniglot(tmp), "images_background/alphabet1/character2/x.png": b"not a png"})


def good(_: Path) -> tuple[str, bytes]:
    return "data.npz", npz(**labelled(50))


BAD_UPLOADS = [
    pytest.param(
        lambda _: ("objects.npz", npz(x=np.array([{"a": 1}] * 100, dtype=object), y=np.arange(100))),
        {},
        "file",
        "pickled (object) arrays are refused",
        id="pickle-only-npz",
    ),
    pytest.param(
        lambda _: ("keys.npz", npz(features=np.zeros((100, 2)), labels=np.arange(100))),
        {},
        "file",
        "missing key 'x'",
        id="wrong-keys",
    ),
    pytest.param(
        lambda _: ("nan.npz", npz(x=np.full((100, 4), np.nan), y=np.repeat(np.arange(50), 2))),
        {},
        "file",
        "field 'x' holds non-finite values",
        id="non-finite",
    ),
    pytest.param(
        lambda _: ("few.npz", npz(**labelled(20))),
        {},
        "file",
        "meta-val split: 5-way tasks need at least 5 classes; this split has 2",
        id="too-few-classes",
    ),
    pytest.param(
        lambda _: ("thin.npz", npz(**labelled(50, per_class=2))),
        {"shots": "2"},
        "file",
        "2 shots + 1 queries need 3 examples of every class; the smallest has 2",
        id="too-few-examples",
    ),
    pytest.param(
        undecodable, {}, "file", "bad/alphabet1/character2/x.png: cannot decode image", id="undecodable-image"
    ),
    pytest.param(
        lambda tmp: ("evil.zip", packed({**omniglot(tmp), "../evil": b"x"})),
        {},
        "file",
        "member '../evil' points outside the archive's folder",
        id="path-traversal",
    ),
    pytest.param(linked, {}, "file", "link.png' is a symbolic link", id="symbolic-link"),
    pytest.param(
        lambda _: ("bomb.zip", packed({"alphabet0/character0/0.png": bytes(UNPACKED_LIMIT - 1)})),
        {},
        "file",
        "a compression ratio over 100:1 as in zip bombs",
        id="zip-bomb",
    ),
    pytest.param(
        lambda _: (
            "bomb.npz",
            npz_compressed(x=np.zeros((UNPACKED_LIMIT // 8, 1)), y=np.zeros(UNPACKED_LIMIT // 8)),
        ),
        {},
        "file",
        f"bytes; the limit is {UNPACKED_LIMIT}",
        id="npz-bomb",
    ),
    pytest.param(good, {"format": "xlsx"}, "format", "unknown format 'xlsx'", id="unknown-format"),
    pytest.param(
        lambda _: ("data.bin", npz(**labelled(50))),
        {},
        "format",
        "cannot tell the format from the file name 'data.bin'",
        id="format-not-in-file-name",
    ),
    pytest.param(good, {"name": "../up"}, "name", "letters, digits", id="bad-name"),
    pytest.param(good, {"ways": "1"}, "ways", "greater than or equal to 2", id="one-way"),
]


@pytest.mark.parametrize(("upload", "form", "field", "reason"), BAD_UPLOADS)
async def test_a_bad_upload_is_refused_naming_the_field_and_the_reason_and_nothing_stays(
    upload: Upload, form: dict[str, str], field: str, reason: str, http: httpx.AsyncClient, service: FastAPI,
    tmp_path: Path,
) -> None:  # fmt: skip
    before = stored(service)
    filename, content = upload(tmp_path)
    data = {"name": filename.split(".")[0], **form}
    response = await http.post("/datasets", files={"file": (filename, content)}, data=data)
    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", field] and reason in problem["msg"], problem
    assert ".partial" not in problem["msg"] and str(service.state.settings.data_dir) not in problem["msg"]
    assert stored(service) == before


class LazyZeros:
    """A file of zeros ``size`` bytes long, made as it is read, that counts the bytes read from it."""

    def __init__(self, size: int) -> None:
        self.size, self.read_bytes = size, 0

    def read(self, count: int = -1) -> bytes:
        count = min(self.size - self.read_bytes, count if count >= 0 else self.size)
        self.read_bytes += count
        return bytes(count)


async def test_an_upload_over_the_limit_is_stopped_while_it_streams_in(
    http: httpx.AsyncClient, service: FastAPI
) -> None:
    before, upload = stored(service), LazyZeros(100 * UPLOAD_LIMIT)
    response = await http.post("/datasets", files={"file": ("big.npz", upload)}, data={"name": "big"})
    assert response.status_code == 413, response.text
    assert upload.read_bytes < 2 * UPLOAD_LIMIT
    assert stored(service) == before


async def test_a_file_over_the_upload_limit_in_a_body_within_the_form_s_room_is_refused(
    client: AsyncClient, service: FastAPI
) -> None:
    before = stored(service)
    with pytest.raises(MetaserveError) as error:
        await client.upload_dataset(bytes(UPLOAD_LIMIT + 1), "big", format="npz")
    assert (
        error.value.status == 413
        and error.value.detail == f"file: larger than the limit of {UPLOAD_LIMIT} bytes"
    )
    assert stored(service) == before
