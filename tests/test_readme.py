"""The examples of README.md and docs/ run as written against a real ``metaserve serve``, and the API
guide's table of routes matches the service's, so neither can drift from the code."""

from __future__ import annotations

import ast
import base64
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from app.config import Settings
from app.families.registry import build_family
from app.keys import ADMIN_KEY_FILE
from app.main import create_app
from tests.test_serve_e2e import free_port, serving
from tests.test_serving import png

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUICKSTART = ROOT / "docs" / "quickstart.md"
API_GUIDE = ROOT / "docs" / "api.md"
DOCUMENTED_ADDRESS = "127.0.0.1:8000"
DOCUMENTED_KEY = "data/admin-key"
LABELS = ["a", "b", "c", "d", "e"]
RUN_SECONDS = 120
# A block to run is marked by an HTML comment just before it, invisible once rendered.
TESTED_BLOCK = re.compile(
    r"<!-- tested: (?P<name>[\w-]+) -->\n```(?P<language>\w+)\n(?P<code>.*?)```\n", re.DOTALL
)


def marked_blocks(document: Path) -> dict[str, tuple[str, str]]:
    """The marked blocks of the Markdown file ``document`` by name: their language and code."""
    matches = TESTED_BLOCK.finditer(document.read_text())
    found = [match.group("name", "language", "code") for match in matches]
    return {name: (language, code) for name, language, code in found}


def table(document: Path, heading: str) -> list[list[str]]:
    """The cells of the body rows of the first table after ``heading`` in ``document``."""
    section = document.read_text().split(f"\n{heading}\n", 1)[1]
    lines = re.search(r"^\|.*?(?=\n\n|\Z)", section, re.MULTILINE | re.DOTALL)
    assert lines is not None, heading
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines.group().splitlines()[2:]]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real ``metaserve serve`` on a free port, its data in a temporary directory: its address and the
    admin key file its first start saved."""
    root = tmp_path_factory.mktemp("readme-serve")
    port = free_port()
    with serving(root / "data", port, root / "serve.log"):
        yield f"127.0.0.1:{port}", root / "data" / ADMIN_KEY_FILE


@pytest.fixture(scope="module")
def drawings(tmp_path_factory: pytest.TempPathFactory, glyphs_cache: Path) -> Path:
    """The files the glyph examples read: ``a.png`` … ``e.png``, one drawing of each of five meta-test
    characters, and ``queries/<label>.png``, another drawing of each; dark ink on white paper."""
    family = build_family("glyphs", 0, cache_dir=glyphs_cache)
    batch = family.sample(torch.Generator().manual_seed(4), "test", tasks=1, ways=5, shots=1, queries=1)
    support_x, support_y, query_x, query_y = batch.task(0)
    root = tmp_path_factory.mktemp("drawings")
    (root / "queries").mkdir()
    for image, label in zip(support_x, support_y, strict=True):
        (root / f"{LABELS[int(label)]}.png").write_bytes(base64.b64decode(png(image)))
    for image, label in zip(query_x, query_y, strict=True):
        (root / "queries" / f"{LABELS[int(label)]}.png").write_bytes(base64.b64decode(png(image)))
    return root


def run_block(document: Path, name: str, served: tuple[str, Path], cwd: Path) -> str:
    """Run the block ``name`` of ``document`` against the service ``served`` (its address and admin key
    file) in ``cwd``; its standard output."""
    language, code = marked_blocks(document)[name]
    address, key_file = served
    code = code.replace(DOCUMENTED_ADDRESS, address).replace(DOCUMENTED_KEY, str(key_file))
    command = {"bash": ["bash", "-euo", "pipefail", "-c", code], "python": [sys.executable, "-c", code]}
    done = subprocess.run(
        command[language], cwd=cwd, capture_output=True, text=True, timeout=RUN_SECONDS, check=False
    )
    assert done.returncode == 0, (name, done.stdout, done.stderr)
    return done.stdout


def assert_two_numbers(predictions: Any) -> None:
    assert isinstance(predictions, list) and len(predictions) == 2, predictions
    assert all(isinstance(p, float) and math.isfinite(p) for p in predictions), predictions


def test_the_readme_and_the_guides_mark_their_client_examples_for_testing() -> None:
    assert marked_blocks(README).keys() == {"sinusoid-python"}
    quickstart = {"sinusoid-python", "sinusoid-curl", "glyphs-python", "glyphs-curl"}
    assert marked_blocks(QUICKSTART).keys() == quickstart
    assert marked_blocks(API_GUIDE).keys() == {"client-sessions", "client-async", "client-job"}


@pytest.mark.parametrize("document", [README, QUICKSTART], ids=["readme", "quickstart"])
def test_the_python_sinusoid_example_prints_two_predictions(
    document: Path, served: tuple[str, Path], tmp_path: Path
) -> None:
    assert_two_numbers(ast.literal_eval(run_block(document, "sinusoid-python", served, tmp_path)))


def test_the_curl_sinusoid_example_adapts_then_predicts_with_the_session(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    answer = json.loads(run_block(QUICKSTART, "sinusoid-curl", served, tmp_path))
    assert answer["model"] == "sinusoid@1" and answer["session_id"], answer
    assert_two_numbers(answer["predictions"])


def test_the_python_glyph_example_recognizes_most_drawings_of_five_characters(
    served: tuple[str, Path], drawings: Path
) -> None:
    lines = run_block(QUICKSTART, "glyphs-python", served, drawings).splitlines()
    assert len(lines) == len(LABELS), lines
    right = 0
    for line in lines:
        file, label, probabilities = line.split(" ", 2)
        shown = ast.literal_eval(probabilities)
        assert set(shown) == set(LABELS) and label == max(shown, key=shown.get), line
        assert sum(shown.values()) == pytest.approx(1, abs=0.01), line
        right += label == Path(file).stem
    assert right >= 4, lines


def test_the_curl_glyph_example_classifies_a_query_among_the_posted_labels(
    served: tuple[str, Path], drawings: Path
) -> None:
    answer = json.loads(run_block(QUICKSTART, "glyphs-curl", served, drawings))
    assert answer["model"] == "glyphs@1", answer
    [guess] = answer["predictions"]
    assert set(guess["probabilities"]) == set(LABELS) and guess["label"] in LABELS, guess
    assert sum(guess["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_the_api_table_lists_every_route_of_the_service(tmp_path: Path) -> None:
    def generic(path: str) -> str:
        return re.sub(r"\{[^}]*\}", "{}", path)

    documented = {tuple(generic(cell.strip("`")).split(" ", 1)) for cell, _ in table(API_GUIDE, "## Routes")}
    paths = create_app(Settings(data_dir=tmp_path)).openapi()["paths"]
    served = {(method.upper(), generic(path)) for path, methods in paths.items() for method in methods}
    assert documented == served


def test_the_client_session_example_adapts_predicts_and_finds_its_deleted_session_gone(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    lines = run_block(API_GUIDE, "client-sessions", served, tmp_path).splitlines()
    models = [line.split()[0] for line in lines[:-4]]
    assert {"sinusoid@1", "glyphs@1", "glyphs-20way@1"} <= set(models), lines
    _, loss_before, loss_after = lines[-4].split()
    assert float(loss_after) < float(loss_before) / 5, lines
    adapted, initial = ast.literal_eval(lines[-3]), ast.literal_eval(lines[-2])
    assert len(adapted) == len(initial) == 1 and adapted != initial, lines
    assert lines[-1] == "404", lines


def test_the_async_client_example_adapts_four_sinusoids_at_once_near_their_truth(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    lines = run_block(API_GUIDE, "client-async", served, tmp_path).splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3", "4"], lines
    for line in lines:
        _, truth, predicted = map(float, line.split())
        assert abs(predicted - truth) < 0.5, lines


def test_the_client_job_example_trains_publishes_and_promotes_a_model(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    lines = run_block(API_GUIDE, "client-job", served, tmp_path).splitlines()
    assert [line.split()[0] for line in lines[:-2]] == ["100", "200", "300"], lines
    assert all(math.isfinite(float(line.split()[1])) for line in lines[:-2]), lines
    assert lines[-2:] == ["my-sinusoid@1", "True"], lines
