"""The dashboard at ``/``: its page and assets all served from the package (no CDN), then the page in a real
headless Chromium (Debian's package, driven by Playwright) against a real ``metaserve serve``: the key taken
from the link's fragment, the sinusoid playground's curves equal to what /predict answers, a drawn glyph
recognized, a job's curve growing live until the cancel button stops it, a finished job promoted.

Screenshots go to ``$METASERVE_TEST_ARTIFACTS`` (else a pytest temporary directory), printed at the end."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from app.client import Client
from app.config import Settings
from app.dashboard import ASSETS, PREFIX
from app.main import create_app
from tests.conftest import http_to
from tests.test_serve_e2e import free_port, serving
from tests.test_serving import copy_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 60_000
SINE_STEPS = 10
ORANGE = (232, 89, 12)
"""The colour of the sinusoid's curve after the shown step and of a job's validation loss (``STYLES.shown``
in sinusoid.js, ``COLORS.val`` in jobs.js)."""

ASSET = re.compile(r'(?:src|href)="(/[^"]*)"|from "\./([\w.]+)"')
"""A local address in the page (``src``, ``href``) or a module a script imports."""


@pytest.mark.anyio
async def test_the_page_and_every_asset_it_loads_come_from_the_package_alone(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    async with http_to(app) as http:
        served, pending = set(), ["/"]
        while pending:
            path = pending.pop()
            response = await http.get(path)
            assert response.status_code == 200, path
            served.add(path)
            assert "http:" not in response.text and "https:" not in response.text, path  # no CDN
            found = {page or f"{PREFIX}/{module}" for page, module in ASSET.findall(response.text)}
            pending += sorted(found - served)
    assert served == {"/"} | {f"{PREFIX}/{file.name}" for file in ASSETS.iterdir()} - {f"{PREFIX}/index.html"}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium with a fresh profile, offline from everything but the service; the browser tests skip,
    saying so loudly, without ``/usr/bin/chromium`` or Playwright."""
    if not CHROMIUM.exists():
        pytest.skip(f"*** {CHROMIUM} is missing: the dashboard's browser tests are SKIPPED (make chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api",
        reason="*** Playwright is missing: the dashboard's browser tests are SKIPPED "
        "(pip install -e '.[dev]')",
    )
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000},
        )
        yield context
        context.close()


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's folder: its models, its data and its log ``serve.log``."""
    return tmp_path_factory.mktemp("dashboard")


@pytest.fixture(scope="module")
def service(root: Path) -> Iterator[Client]:
    """``metaserve serve`` on the shipped sinusoid and glyphs, with a client holding its admin key; stopped
    with SIGTERM, which stops the training workers of the jobs the tests leave running."""
    for name in ("sinusoid", "glyphs"):
        copy_model(name, root / "models" / name)
    environment = {"METASERVE_MODELS_DIR": str(root / "models")}
    with serving(root / "data", free_port(), root / "serve.log", environment) as client:
        yield client


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = os.environ.get("METASERVE_TEST_ARTIFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("dashboard-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    yield path
    print(f"\ndashboard screenshots: {path}")


@pytest.fixture(scope="module")
def page(browser: Any, service: Client) -> Iterator[Any]:
    """The dashboard, opened from the link the server logs: the key in the URL's fragment."""
    page = browser.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{service.http.base_url}/#key={service.http.headers['X-API-Key']}")
    page.wait_for_selector('#sine-plot[data-status="ready"]')
    yield page
    assert not errors, errors
    page.close()


def drawn(page: Any, canvas: str, rgb: tuple[int, int, int]) -> int:
    """How many device pixels of the canvas ``canvas`` (a selector) are painted about ``rgb``."""
    return int(
        page.eval_on_selector(
            canvas,
            """(canvas, rgb) => {
                const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
                let count = 0;
                for (let i = 0; i < data.length; i += 4) {
                    const near = [0, 1, 2].every((c) => Math.abs(data[i + c] - rgb[c]) < 40);
                    if (near && data[i + 3] > 200) count++;
                }
                return count;
            }""",
            list(rgb),
        )
    )


def shown_curve(page: Any) -> dict[str, Any]:
    curve: dict[str, Any] = json.loads(page.get_attribute("#sine-plot", "data-curve"))
    return curve


def test_the_key_from_the_logged_link_is_kept_and_leaves_the_address_bar(
    page: Any, service: Client, root: Path
) -> None:
    key = service.http.headers["X-API-Key"]
    assert f"{service.http.base_url}/#key={key}" in (root / "serve.log").read_text()
    assert "#" not in page.url
    assert page.evaluate("localStorage.getItem('metaserve.key')") == key
    assert page.text_content("#key-status") == "key accepted"
    assert page.input_value("#sine-model") == "sinusoid@1"


def test_clicked_points_draw_the_curves_that_predict_answers_and_leave_no_session(
    page: Any, service: Client, artifacts: Path
) -> None:
    box = page.locator("#sine-plot").bounding_box()
    for fx, fy in [(0.2, 0.35), (0.45, 0.6), (0.7, 0.3)]:
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
    page.wait_for_selector('#sine-plot[data-status="ready"][data-points="3"]')
    support = json.loads(page.get_attribute("#sine-plot", "data-support"))
    adapted = shown_curve(page)
    assert adapted["steps"] == SINE_STEPS
    assert drawn(page, "#sine-plot", ORANGE) > 300
    page.screenshot(path=artifacts / "sinusoid.png", full_page=True)
    assert service.sessions().sessions == []  # every session the page made is deleted once drawn

    page.locator("#sine-shown").fill("0")
    initial = shown_curve(page)
    assert initial["steps"] == 0
    assert page.text_content("#sine-stats").startswith("support MSE: initialization")

    session = service.adapt(support["x"], support["y"], model="sinusoid", steps=SINE_STEPS)
    expected = service.predict(adapted["x"], session_id=session.session_id).predictions
    torch.testing.assert_close(torch.tensor(adapted["y"]), torch.tensor(expected), atol=1e-4, rtol=1e-4)
    expected = service.predict(initial["x"], model="sinusoid").predictions
    torch.testing.assert_close(torch.tensor(initial["y"]), torch.tensor(expected), atol=1e-5, rtol=1e-5)
    service.delete_session(session.session_id)


def stroke(page: Any, selector: str, points: list[tuple[float, float]]) -> None:
    """Draw one stroke through ``points`` (fractions of the pad) with the mouse on the pad ``selector``."""
    box = page.locator(selector).bounding_box()
    at = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for point in at[1:]:
        page.mouse.move(*point, steps=4)
    page.mouse.up()


GLYPHS = {
    "A": [(0.5, 0.15), (0.5, 0.85)],
    "B": [(0.15, 0.5), (0.85, 0.5)],
    "C": [(0.8, 0.25), (0.5, 0.15), (0.2, 0.4), (0.25, 0.75), (0.55, 0.85), (0.8, 0.7)],
}
"""Three drawings unlike each other: a vertical bar, a horizontal bar and a C."""


def test_drawn_glyphs_adapt_and_a_drawn_query_gets_a_label_with_probabilities(
    page: Any, artifacts: Path
) -> None:
    assert page.input_value("#glyph-model") == "glyphs@1"
    page.locator("#glyph-classes").fill("3")
    page.locator("#glyph-classes").dispatch_event("change")
    page.click("#glyph-adapt")
    assert "Draw every example first" in page.text_content("#glyph-session")
    pads = page.locator("#glyph-grid canvas.pad")
    assert pads.count() == len(GLYPHS)
    for index, points in enumerate(GLYPHS.values()):
        stroke(page, f"#glyph-grid .glyph-row:nth-child({index + 1}) canvas.pad", points)
    page.click("#glyph-adapt")
    page.wait_for_selector('#glyph-session[data-status="adapted"]')
    stroke(page, "#glyph-query canvas.pad", GLYPHS["A"])
    page.wait_for_selector('#glyph-result[data-label]:not([data-label=""])')
    probabilities = json.loads(page.get_attribute("#glyph-result", "data-probabilities"))
    assert set(probabilities) == set(GLYPHS)
    assert sum(probabilities.values()) == pytest.approx(1, abs=1e-4)
    assert page.get_attribute("#glyph-result", "data-label") == "A"
    assert page.locator("#glyph-result .bar").count() == len(GLYPHS)
    page.screenshot(path=artifacts / "glyphs.png", full_page=True)


def test_sampled_characters_adapt_and_a_sampled_query_gets_a_probability_per_class(
    page: Any, artifacts: Path
) -> None:
    page.locator("#glyph-classes").fill("5")
    page.locator("#glyph-classes").dispatch_event("change")
    page.click("#glyph-sample")
    labels = [page.input_value(f"#glyph-grid .glyph-row:nth-child({i}) input.label") for i in range(1, 6)]
    assert len(set(labels)) == 5
    page.click("#glyph-adapt")
    page.wait_for_selector('#glyph-session[data-status="adapted"]')
    page.click("#glyph-query-clear")
    page.click("#glyph-query-sample")
    page.wait_for_selector('#glyph-result[data-label]:not([data-label=""])')
    assert page.get_attribute("#glyph-query canvas.pad", "data-character") in labels
    probabilities = json.loads(page.get_attribute("#glyph-result", "data-probabilities"))
    assert set(probabilities) == set(labels)
    assert sum(probabilities.values()) == pytest.approx(1, abs=1e-4)
    page.screenshot(path=artifacts / "glyphs-sampled.png", full_page=True)


def submit_job(page: Any, name: str, iterations: int) -> str:
    """Fill and send the jobs panel's form; the id of the job it then watches."""
    page.click('[data-tab="jobs"]')
    form = page.locator("#job-form")
    form.locator('[name="name"]').fill(name)
    form.locator('[name="iterations"]').fill(str(iterations))
    form.locator('[name="val_every"]').fill("20")
    form.locator('[name="meta_batch"]').fill("4")
    before = page.get_attribute("#job-watch", "data-job")
    page.click("#job-submit")
    page.wait_for_function(
        "(before) => (document.querySelector('#job-watch').dataset.job || null) !== before", arg=before
    )
    job_id: str = page.get_attribute("#job-watch", "data-job")
    return job_id


def points(page: Any) -> int:
    return int(page.get_attribute("#job-watch", "data-points") or 0)


def test_a_job_s_curve_grows_live_and_the_cancel_button_stops_it(page: Any, artifacts: Path) -> None:
    job_id = submit_job(page, "endless", 1_000_000)
    page.wait_for_selector('#job-watch[data-state="running"]')
    page.wait_for_function("() => Number(document.querySelector('#job-watch').dataset.points) >= 2")
    seen = points(page)
    page.wait_for_function(
        "(seen) => Number(document.querySelector('#job-watch').dataset.points) > seen", arg=seen
    )
    assert drawn(page, "#job-loss", ORANGE) > 100
    page.screenshot(path=artifacts / "job-running.png", full_page=True)
    page.click(f'tr[data-job="{job_id}"] button:text-is("cancel")')
    page.wait_for_selector('#job-watch[data-state="cancelled"]')
    page.wait_for_selector(f'tr[data-job="{job_id}"][data-state="cancelled"]')


def test_a_finished_job_s_promote_button_serves_its_version(
    page: Any, service: Client, artifacts: Path
) -> None:
    job_id = submit_job(page, "sinusoid", 40)
    page.wait_for_selector('#job-watch[data-state="succeeded"]')
    assert points(page) >= 2
    # The service loads a published version within a second of the job's success; promoting it earlier is
    # a 404 that names the loaded models.
    deadline = time.monotonic() + 30
    while "sinusoid@2" not in {m.ref for m in service.models()}:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    page.click(f'tr[data-job="{job_id}"] button:text-is("promote sinusoid@2")')
    page.wait_for_selector("#message.info:not([hidden])")
    assert page.text_content("#message") == "sinusoid now serves sinusoid@2."
    assert [m.ref for m in service.models() if m.default] == ["glyphs@1", "sinusoid@2"]
    page.click('[data-tab="models"]')
    page.wait_for_selector('#models-body tr[data-model="sinusoid@2"] .badge')
    assert page.locator('#models-body tr[data-model="sinusoid@1"] button:text-is("promote")').count() == 1
    page.screenshot(path=artifacts / "models.png", full_page=True)


def test_a_refused_key_shows_the_api_s_reason_and_a_good_key_lists_sessions_to_delete(
    page: Any, service: Client, artifacts: Path
) -> None:
    page.click('[data-tab="sessions"]')
    page.fill("#key", "ms_0000000000000000_" + "x" * 43)
    page.click('#key-form button[type="submit"]')
    page.wait_for_selector("#message.error:not([hidden])")
    assert page.text_content("#message").startswith("401 unknown or revoked API key")
    assert page.text_content("#key-status") == "key needed"
    page.fill("#key", service.http.headers["X-API-Key"])
    page.click('#key-form button[type="submit"]')
    page.wait_for_selector("#sessions-body tr[data-session]")
    assert page.locator("#sessions-body tr[data-session]").count() == 1  # the glyph playground's session
    page.screenshot(path=artifacts / "sessions.png", full_page=True)
    page.click('#sessions-body button:text-is("delete")')
    page.wait_for_selector("#sessions-body tr:not([data-session])")
    assert service.sessions().sessions == []
