"""POST /datasets (a multipart upload), GET /datasets, GET /datasets/{id} and DELETE /datasets/{id}.

``create_app`` includes this router with a body limit of its own (``body_limit``), larger than the other
routes'."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, UploadFile, status

from app.api.deps import CallerDep, DatasetStoreDep
from app.api.errors import invalid_fields, problems
from app.api.schemas import Dataset, Problem
from app.config import Settings
from app.datasets import FORMATS, TooLarge
from app.db import tables

__all__ = ["FORM_OVERHEAD", "body_limit", "router"]

FORM_OVERHEAD = 2**16
"""Bytes of a multipart upload beside the file: the other fields, the part headers and boundaries."""

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=problems(503))


def body_limit(settings: Settings) -> int:
    """The request body limit of these routes: the largest upload and the form around it."""
    return settings.max_upload_bytes + FORM_OVERHEAD


def dataset_view(row: tables.Dataset) -> Dataset:
    """The API's view of a dataset: the row's columns less its path on the server, its id as `dataset_id`."""
    columns = Dataset.model_fields.keys() - {"dataset_id"}
    return Dataset.model_validate({"dataset_id": row.id, **{name: getattr(row, name) for name in columns}})


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        **problems(400),
        status.HTTP_413_CONTENT_TOO_LARGE: {
            "model": Problem,
            "description": "Over METASERVE_MAX_UPLOAD_BYTES.",
        },
    },
)
def upload_dataset(
    store: DatasetStoreDep,
    caller: CallerDep,
    file: Annotated[UploadFile, File(description="The dataset file, streamed to disk as it arrives.")],
    name: Annotated[str, Form(description="Up to 64 letters, digits, '.', '_' or '-'.")],
    format: Annotated[
        str | None, Form(description=f"One of {', '.join(FORMATS)}; else the file's suffix.")
    ] = None,
    ways: Annotated[int, Form(ge=2, description="N of the N-way tasks every split must yield.")] = 5,
    shots: Annotated[int, Form(ge=1, description="Support examples a class in those tasks.")] = 1,
    queries: Annotated[int, Form(ge=1, description="Query examples a class in those tasks.")] = 1,
) -> Dataset:
    """Store a dataset for meta-training: an `.npz` (`x`, `y`, optional `task`), a CSV with a header row, or
    a zip of images in class folders (`class/*.png` or Omniglot's `alphabet/character/*.png`). It is
    refused with the field and the reason unless its task family builds as training will build it and every
    meta-train/val/test split yields a `ways`-way task of `shots` + `queries` examples a class."""
    # A plain function, run in FastAPI's threadpool: checking a dataset decodes and splits all of it.
    try:
        with invalid_fields("body"):
            row = store.create(
                name, format, file.file, filename=file.filename, ways=ways, shots=shots, queries=queries,
                owner=caller.id,
            )  # fmt: skip
    except TooLarge as error:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, str(error)) from None
    return dataset_view(row)


@router.get("")
def list_datasets(store: DatasetStoreDep, caller: CallerDep) -> list[Dataset]:
    """Your datasets (every key's for an admin key), newest first."""
    return [dataset_view(row) for row in store.list(caller.scope)]


@router.get("/{dataset_id}", responses=problems(404))
def get_dataset(dataset_id: str, store: DatasetStoreDep, caller: CallerDep) -> Dataset:
    return dataset_view(store.get(dataset_id, caller.scope))


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **problems(404),
        status.HTTP_409_CONFLICT: {
            "model": Problem,
            "description": "A queued or running job reads the dataset.",
        },
    },
)
def delete_dataset(dataset_id: str, store: DatasetStoreDep, caller: CallerDep) -> None:
    """Delete a dataset and its files; refused (409) while a queued or running job reads it."""
    store.delete(dataset_id, caller.scope)
