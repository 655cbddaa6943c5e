"""The configuration reference (docs/configuration.md), written from the Settings class so that it cannot
drift from the code: ``python -m app.config_reference > docs/configuration.md`` (``make docs``)."""

from __future__ import annotations

import types
import typing
from pathlib import Path

from annotated_types import Ge, Gt, Le, MinLen
from pydantic.fields import FieldInfo

from app.config import Settings

__all__ = ["reference"]

MiB = 2**20

HEADER = """\
# Configuration

<!-- Generated from app/config.py by `make docs` (python -m app.config_reference); do not edit. -->

Every setting is an environment variable, read once when a process starts (`app/config.py`). Booleans
take `true`/`false`, `1`/`0`, `on`/`off` or `yes`/`no`; paths are relative to the working directory of
the process. A value out of its range stops the process at start, naming the setting (`port` for
`METASERVE_PORT`).

| variable | type | default | description |
|---|---|---|---|
"""


def type_of(field: FieldInfo) -> str:
    """The field's type in words, with its bounds, e.g. ``integer ≥ 1`` or ``integer from 1 to 65535``."""
    annotation = field.annotation
    optional = False
    if isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation):
        (annotation,) = (arg for arg in typing.get_args(annotation) if arg is not type(None))
        optional = True
    if typing.get_origin(annotation) is typing.Literal:
        text = "one of " + ", ".join(f"`{value}`" for value in typing.get_args(annotation))
    else:
        names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path"}
        text = names[typing.cast(type, annotation)]
    ge = next((bound.ge for bound in field.metadata if isinstance(bound, Ge)), None)
    gt = next((bound.gt for bound in field.metadata if isinstance(bound, Gt)), None)
    le = next((bound.le for bound in field.metadata if isinstance(bound, Le)), None)
    if ge is not None and le is not None:
        text += f" from {ge} to {le}"
    elif ge is not None:
        text += f" ≥ {ge}"
    elif gt is not None:
        text += f" > {gt}"
    if any(isinstance(b, MinLen) and b.min_length == 1 for b in field.metadata):
        text += ", not empty"
    return f"{text}, optional" if optional else text


def default_of(name: str, field: FieldInfo) -> str:
    """The default as the variable would spell it; byte sizes also in MiB."""
    default = field.default
    if default is None:
        return "unset"
    text = f"`{str(default).lower() if isinstance(default, bool) else default}`"
    if name.endswith("_bytes") and isinstance(default, int) and default >= MiB and default % MiB == 0:
        text += f" ({default // MiB:,} MiB)"
    return text


def markdown_cell(text: str) -> str:
    """``text`` safe in a table cell: ``<data_dir>`` would be read as an HTML tag, ``|`` as a column."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def reference() -> str:
    """docs/configuration.md: one table row per setting, in the order of the Settings class."""
    rows = []
    for name, field in Settings.model_fields.items():
        cells = [f"`METASERVE_{name.upper()}`", type_of(field), default_of(name, field)]
        rows.append(f"| {' | '.join(cells)} | {markdown_cell(field.description or '')} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
