"""``metaserve serve`` as a real uvicorn process, through ``app.client.Client``: it starts, adapts a session
that predicts far better than the initialization, stops on SIGTERM, and after a restart on the same data
directory gives bit-identical predictions for that session."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import torch

from app.client import Client
from tests.conftest import admin_key
from tests.test_cli import METASERVE
from tests.test_serving import sinusoid

MODELS = Path(__file__).resolve().parents[1] / "models"
START_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def server_process(
    data_dir: Path,
    port: int,
    log: Path,
    environment: Mapping[str, str] | None = None,
    options: Sequence[str] = (),
) -> Iterator[tuple[subprocess.Popen[bytes], Client]]:
    """``metaserve serve`` on ``port``, with ``environment`` added and its ``options`` (``--workers 2``), once
    it is ready, with a client that sends the admin key its first start saved in ``data_dir``. It leads a
    process group of its own, whatever still runs of which (its worker processes too) is killed on
    leaving."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "METASERVE_DATA_DIR": str(data_dir),
        "METASERVE_MODELS_DIR": str(MODELS),
        "METASERVE_DRAIN_SECONDS": "0",  # stopping at once; tests/test_crash.py tests the drain
        **(environment or {}),
    }
    with log.open("ab") as output:
        command = [METASERVE, "serve", "--port", str(port), *options]
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        with Client(f"http://127.0.0.1:{port}") as client:
            deadline = time.monotonic() + START_SECONDS
            while not _ready(client):
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            key = admin_key(data_dir)
            if key is not None:
                client.http.headers["X-API-Key"] = key
            yield process, client
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def serving(
    data_dir: Path, port: int, log: Path, environment: Mapping[str, str] | None = None
) -> Iterator[Client]:
    """``server_process``, stopped with SIGTERM on leaving, which must end it cleanly (uvicorn shuts down,
    saying so in the last JSON lines of the log, then dies of the signal it caught, as the signal's sender
    expects)."""
    with server_process(data_dir, port, log, environment) as (process, client):
        try:
            yield client
        except BaseException:
            # Still SIGTERM, so that the job workers stop too (a SIGKILL of the server leaves them running).
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
            raise
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
        last = [json.loads(line)["message"] for line in log.read_text().splitlines()[-2:]]
        assert last == ["Application shutdown complete.", f"Finished server process [{process.pid}]"], (
            log.read_text()
        )


def _ready(client: Client) -> bool:
    try:
        return client.ready()
    except httpx.TransportError:
        return False


def test_a_served_session_beats_the_initialization_and_survives_a_restart_bit_for_bit(tmp_path: Path) -> None:
    x, y, query_x, query_y = sinusoid(seed=31)
    queries = query_x.tolist()
    port, log = free_port(), tmp_path / "serve.log"
    with serving(tmp_path / "data", port, log) as client:
        session = client.adapt(x, y, model="sinusoid", steps=10)
        adapted = client.predict(queries, session_id=session.session_id).predictions
        initial = client.predict(queries, model="sinusoid").predictions
    adapted_mse = float((torch.tensor(adapted) - query_y).square().mean())
    initial_mse = float((torch.tensor(initial) - query_y).square().mean())
    assert adapted_mse * 5 <= initial_mse, (adapted_mse, initial_mse)

    with serving(tmp_path / "data", port, log) as client:
        assert client.predict(queries, session_id=session.session_id).predictions == adapted
        assert client.session(session.session_id).created == session.created
