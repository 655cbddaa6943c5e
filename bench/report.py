"""What every benchmark report shares: the commit it measured, Markdown tables, JSON + Markdown files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]


def commit() -> str:
    """The commit measured, ``-dirty`` where the tree differs from it: uncommitted edits, or a device
    machine whose copy of ``.git`` lags the tree it was sent."""
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    return [f"| {' | '.join(header)} |", "|" + "---|" * len(header), *(f"| {' | '.join(r)} |" for r in rows)]


def write(out: Path, report: dict[str, Any], text: str) -> None:
    """Print the Markdown and write ``OUT.json`` and ``OUT.md``."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(text)


def run_and_write(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """A benchmark's main: ``run(args)``, then its report written to ``args.out`` as ``markdown`` says."""
    report = run(args)
    write(args.out, report, markdown(report))


def device_parser(description: str, name: str) -> argparse.ArgumentParser:
    """The arguments of an engine benchmark that runs on a CPU or a GPU: ``--device`` (a GPU where there is
    one), ``--repeats``, and ``--out`` (default ``bench/results/NAME-DEVICE``, filled in by
    ``run_on_device``)."""
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--out", type=Path, default=None, help=f"writes OUT.{{json,md}} (default results/{name}-DEVICE)"
    )
    ap.set_defaults(name=name)
    return ap


def run_on_device(
    ap: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    markdown: Callable[[dict[str, Any]], str],
) -> None:
    """A ``device_parser`` benchmark's main: its arguments parsed, then ``run_and_write``."""
    args = ap.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / f"{args.name}-{args.device}"
    run_and_write(args, run, markdown)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer around it times the work (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gflops(device: torch.device, size: int = 2048) -> float:
    """The machine's attainable float32 rate: the best of a few large matrix products."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def flops(work: Callable[[], object]) -> int:
    """The floating-point operations of one run of ``work``, as ``torch.utils.flop_counter`` counts them
    (matmuls and convolutions, forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        work()
    return int(counter.get_total_flops())


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, or what ``platform`` knows where there is none."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def machine(**extra: Any) -> dict[str, Any]:
    """What a report was measured on: date, commit, CPU, cores, torch and its threads, then ``extra``."""
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit(),
        "cpu": cpu_name(),
        "nproc": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        **extra,
    }
