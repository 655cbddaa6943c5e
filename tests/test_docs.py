"""The documentation cannot drift from the code: the configuration reference is what the settings generate,
every setting a page names exists, and every relative link points at a file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config import Settings
from app.config_reference import reference

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
TEST_VARIABLES = {"METASERVE_TEST_ARTIFACTS"}
"""Variables of the test suite, not settings: tests/test_dashboard.py's folder for screenshots."""


def test_the_configuration_reference_is_generated_from_the_settings() -> None:
    assert (ROOT / "docs" / "configuration.md").read_text() == reference(), "stale: run `make docs`"


def test_the_reference_has_one_row_per_setting_with_its_variable_type_default_and_description() -> None:
    rows = {line.split("`")[1]: line for line in reference().splitlines() if line.startswith("| `METASERVE_")}
    assert list(rows) == [f"METASERVE_{name.upper()}" for name in Settings.model_fields]
    assert "| integer from 1 to 65535 | `8000` | Port the HTTP server listens on. |" in rows["METASERVE_PORT"]
    assert "| integer > 0 | `268435456` (256 MiB) |" in rows["METASERVE_SESSION_CACHE_BYTES"]
    assert "| boolean | `true` |" in rows["METASERVE_AUTH"]
    assert "| one of `auto`, `cpu`, `cuda` | `auto` |" in rows["METASERVE_DEVICE"]
    assert "| string, not empty, optional | unset |" in rows["METASERVE_DATABASE_URL"]
    assert "SQLite at &lt;data_dir&gt;/metaserve.db" in rows["METASERVE_DATABASE_URL"]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_setting_a_page_names_exists(page: Path) -> None:
    settings = {f"METASERVE_{name.upper()}" for name in Settings.model_fields}
    assert set(re.findall(r"METASERVE_[A-Z_]*[A-Z]", page.read_text())) <= settings | TEST_VARIABLES


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page``: lower case, punctuation dropped, spaces as '-'."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_of_the_repository_and_a_heading_in_it(page: Path) -> None:
    targets = [match["target"] for match in LINK.finditer(page.read_text())]
    broken = []
    for target in (t for t in targets if not re.match(r"[a-z]+:", t)):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    assert not broken, broken
