"""Datasets uploaded for meta-training: checked as training will read them, stored under the data
directory, described in the database."""

from app.datasets.store import DatasetStore
from app.datasets.upload import FORMATS, TooLarge

__all__ = ["FORMATS", "DatasetStore", "TooLarge"]
