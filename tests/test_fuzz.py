"""schemathesis against the live OpenAPI schema of a real ``metaserve serve``: every check, its examples,
coverage, fuzzing and stateful phases, with valid and invalid data, then the stateful phase again on sessions
that adapt (adapt → predict, get, delete through the links of POST /adapt). It must find no server error,
no response off the schema and no invalid input accepted; how many cases ran, and how many of them were
invalid inputs, is printed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_serve_e2e import free_port, server_process

SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
MAX_EXAMPLES = 15
"""Cases per operation and phase: about 1,000 in all, in about a minute on a 2-core machine."""
SEED = 7

# The schema cannot say what a request means to the models loaded (an input shape, a known session, a
# dataset that builds, exactly one of two fields), so a schema-valid body to these may get a 422 naming the
# field; every other check keeps its defaults. A job's event stream lasts as long as the job (hours for a
# fuzzed spec) and no stream limit of schemathesis ends it: tests/test_jobs.py covers it instead.
CONFIG = """\
[[operations]]
include-path = "/jobs/{job_id}/events"
enabled = false

[[operations]]
include-path-regex = "^/(adapt|predict|jobs|datasets)$"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "422", "429", "5xx"]
"""


# Random support sets almost never fit a model, so for the session chain /adapt gets a sinusoid's.
SESSIONS = (
    CONFIG
    + """
[[operations]]
include-path = "/adapt"
include-method = "POST"
parameters."body.model" = "sinusoid"
parameters."body.steps" = 3
parameters."body.lr" = 0.01
parameters."body.support" = { x = [-2, 0, 2], y = [-0.9, 0, 0.9] }

[[operations]]
include-path = "/predict"
include-method = "POST"
parameters = { "body.x" = [0.5, 1.5] }
"""
)


def api_key_headers(data_dir: Path) -> list[str]:
    """``--header`` options carrying the admin key that the server wrote on its first start, if it did."""
    key = data_dir / "admin-key"
    return ["--header", f"X-API-Key: {key.read_text().strip()}"] if key.exists() else []


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real ``metaserve serve`` on the shipped models: its URL and its data directory. It stops with
    SIGTERM, which stops the training workers of the jobs fuzzed into it (they outlive a SIGKILL)."""
    root, port = tmp_path_factory.mktemp("fuzzed"), free_port()
    with server_process(root / "data", port, root / "serve.log") as (process, _):
        yield f"http://127.0.0.1:{port}", root / "data"
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def schemathesis(
    service: tuple[str, Path], directory: Path, config: str, phases: str, *options: str
) -> list[dict]:
    """Run schemathesis with every check on ``phases`` (and ``options``); fail with its report unless it
    found nothing. Returns the scenarios it ran (NDJSON events), which hold the cases."""
    (directory / "schemathesis.toml").write_text(config)
    url, data_dir = service
    events = directory / "events.ndjson"
    command = [
        SCHEMATHESIS, "--config-file", str(directory / "schemathesis.toml"), "run", f"{url}/openapi.json",
        "--checks", "all", "--mode", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED),
        "--phases", phases, "--workers", "1", "--request-timeout", "60",
        "--generation-with-security-parameters", "false", "--no-color", "--output-truncate", "false",
        "--report", "ndjson", "--report-ndjson-path", str(events), *api_key_headers(data_dir), *options,
    ]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=directory)
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    lines = (json.loads(line).get("ScenarioFinished") for line in events.read_text().splitlines())
    return [scenario for scenario in lines if scenario]


def cases(scenarios: list[dict]) -> list[dict]:
    return [case for s in scenarios for case in s.get("recorder", {}).get("cases", {}).values()]


def test_schemathesis_finds_no_server_error_no_schema_break_and_no_accepted_invalid_input(
    service: tuple[str, Path], tmp_path: Path
) -> None:
    ran = cases(schemathesis(service, tmp_path, CONFIG, "examples,coverage,fuzzing,stateful"))
    modes = Counter(case["value"]["meta"]["generation"]["mode"] for case in ran)
    print(f"schemathesis: {len(ran)} cases, {modes['negative']} of them invalid inputs")
    assert modes["negative"] >= 200 and len(ran) >= 500, modes


def test_stateful_fuzzing_follows_sessions_from_adapt_to_predict_and_delete(
    service: tuple[str, Path], tmp_path: Path
) -> None:
    only_sessions = ("--include-path-regex", "^/(adapt|predict|sessions)")
    ran = cases(schemathesis(service, tmp_path, SESSIONS, "stateful", *only_sessions))
    followed = Counter(
        case["transition"]["id"].split(" -> ")[-1]
        for case in ran
        if (case.get("transition") or {}).get("id", "").startswith("POST /adapt -> [200]")
    )
    print(
        f"schemathesis, stateful on sessions: {len(ran)} cases, links from /adapt followed: {dict(followed)}"
    )
    assert {"POST /predict", "GET /sessions/{session_id}", "DELETE /sessions/{session_id}"} <= set(followed)
