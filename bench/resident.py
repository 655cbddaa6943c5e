"""How many sessions ``app.serving.cache.SessionCache`` holds and how fast it answers: bytes per session in
memory (the tensors', and the process's RSS growth per entry, measured in a fresh process beside the dict of
tensors the former cache held), on disk (a real safetensors file), how many fit in 4 GiB of each, and
``get()`` latency for device-tier hits, host-tier hits (CUDA only) and misses read from the session's file.
Usage: ``python bench/resident.py --help``.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import random
import secrets
import statistics
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.checkpoint import load_weights  # noqa: E402
from app.meta import Params  # noqa: E402
from app.meta.flat import flatten  # noqa: E402
from app.meta.nets import is_head  # noqa: E402
from app.serving.cache import SessionCache  # noqa: E402
from bench.report import machine, table, write  # noqa: E402
from bench.serve import timed  # noqa: E402

GiB = 2**30
BUDGET = 4 * GiB
UNBOUNDED = 2**62
HIT_CALLS = 20_000
WARMUP = 100
MEMORY_SHARE = 10
"""In the miss and host-hit runs the tier in front holds one session in this many of the working set."""


@dataclass(frozen=True)
class Kind:
    """A kind of session: the tensors adaptation changes in one shipped model, and how many to measure."""

    name: str
    model: str
    head_only: bool
    entries: int
    """Sessions put in the cache to measure RSS per entry."""
    files: int
    """Session files in the working set of the miss run."""

    def params(self) -> Params:
        """A session's tensors: the initialization's stand in for adapted ones (same names, shapes, dtype)."""
        weights = load_weights(ROOT / "models" / self.model)
        return {k: v for k, v in weights.items() if is_head(k) or not self.head_only}


KINDS = (
    Kind("sinusoid, every tensor (MAML)", "sinusoid", False, 20_000, 2_000),
    Kind("glyphs conv4, every tensor (MAML)", "glyphs", False, 2_000, 300),
    Kind("glyphs conv4, head only (ANIL)", "glyphs", True, 100_000, 2_000),
)


def rss() -> int:
    """This process's resident set size in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status: resident memory is measured on Linux only")


def rss_per_entry(kind: Kind, compact: bool) -> float:
    """RSS growth per session (its 43-character key included) once ``kind.entries`` are held by a
    ``SessionCache`` on the CPU (``compact``) or, as the former cache held them, by an OrderedDict of dicts
    of tensors. Run in a fresh process, so that no memory freed earlier is reused."""
    params = kind.params()
    cache, held = SessionCache(torch.device("cpu"), UNBOUNDED, 0), OrderedDict[str, Params]()
    gc.collect()
    before = rss()
    for _ in range(kind.entries):
        if compact:
            cache.put(secrets.token_urlsafe(32), flatten(params))
        else:
            held[secrets.token_urlsafe(32)] = {k: v.clone() for k, v in params.items()}
    gc.collect()
    return (rss() - before) / kind.entries


def in_fresh_process(kind: Kind, compact: bool) -> float:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return float(pool.apply(rss_per_entry, (kind, compact)))


def on_disk(path: Path) -> dict[str, int]:
    """Size and allocated blocks of a session's file."""
    stat = path.stat()
    return {"file_bytes": stat.st_size, "allocated_bytes": stat.st_blocks * 512}


def micros(samples_ms: list[float]) -> dict[str, float]:
    """p50, p99 (inclusive method) and mean of per-call milliseconds, in microseconds."""
    cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
    return {"p50": cuts[49] * 1e3, "p99": cuts[98] * 1e3, "mean": statistics.fmean(samples_ms) * 1e3}


def latencies(kind: Kind, params: Params, device: torch.device, files: Path) -> dict[str, Any]:
    """Microseconds per ``get()``: hits in the device tier (every session cached, random keys), hits in the
    host tier (CUDA: the device holds 1 in MEMORY_SHARE, the host all; a sweep promotes on every get) and
    misses (memory holds 1 in MEMORY_SHARE: a sweep misses on every get, reads the file and puts it), the
    files written into ``files`` as the service writes them."""
    keys = [secrets.token_urlsafe(32) for _ in range(kind.files)]
    for key in keys:
        (files / f"{key}.safetensors").write_bytes(save(params))
    size, synced = sum(t.nbytes for t in params.values()), device.type == "cuda"
    flat = flatten(params)
    front = size * kind.files // MEMORY_SHARE

    def sweep(cache: SessionCache, read: bool) -> Callable[[int], object]:
        def call(i: int) -> None:
            key = keys[i % len(keys)]
            if cache.get(key) is None and read:
                cache.put(key, flatten(load_file(files / f"{key}.safetensors", device=str(device))))
            if synced:
                torch.cuda.synchronize(device)

        return call

    everything = SessionCache(device, UNBOUNDED, 0)
    for key in keys:
        everything.put(key, flat)
    order = random.Random(0).choices(keys, k=WARMUP + HIT_CALLS)
    found: dict[str, Any] = {
        "device_hit": micros(timed(lambda i: everything.get(order[i]), WARMUP, HIT_CALLS))
    }
    if synced:
        tiered = SessionCache(device, front, UNBOUNDED)
        for key in keys:
            tiered.put(key, flat)
        found["host_hit"] = micros(timed(sweep(tiered, read=False), WARMUP, kind.files))
        assert tiered.stats()["host"].misses == 0, "every get of the sweep must hit the host tier"
    else:
        found["host_hit"] = None
    missing = SessionCache(device, front, 0)
    found["miss_from_file"] = micros(timed(sweep(missing, read=True), WARMUP, kind.files))
    assert missing.stats()["device"].hits == 0, "every get of the sweep must miss"
    return found


def measure(kind: Kind, scale: float, device: torch.device, directory: Path) -> dict[str, Any]:
    params = kind.params()
    scaled = replace(kind, entries=round(kind.entries * scale), files=round(kind.files * scale))
    compact, plain = in_fresh_process(scaled, compact=True), in_fresh_process(scaled, compact=False)
    tensor_bytes = sum(t.nbytes for t in params.values())
    with tempfile.TemporaryDirectory(dir=directory) as files:
        latency = latencies(scaled, params, device, Path(files))
        disk = on_disk(next(Path(files).iterdir()))
    return {
        "kind": asdict(scaled),
        "tensors": len(params),
        "tensor_bytes": tensor_bytes,
        "rss_per_entry": compact,
        "rss_per_entry_dict": plain,
        "in_memory_budget": int(BUDGET // compact),
        "budget_admits": BUDGET // tensor_bytes,
        **disk,
        "on_disk_budget": BUDGET // disk["allocated_bytes"],
        "get_us": latency,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device, load = torch.device(args.device), os.getloadavg()[0]
    rows = [measure(kind, args.scale, device, args.dir) for kind in KINDS]
    head = next(row for kind, row in zip(KINDS, rows, strict=True) if kind.head_only)
    return {
        "machine": machine(
            device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            block_size=os.statvfs(args.dir).f_bsize,
            load_average=load,
        ),
        "rows": rows,
        "targets": {
            "in_memory": {"text": "≥ 100,000 head-only sessions in 4 GiB of memory",
                          "found": head["in_memory_budget"], "met": head["in_memory_budget"] >= 100_000},
            "on_disk": {"text": "≥ 1,000,000 head-only sessions stored (4 GiB of disk here)",
                        "found": head["on_disk_budget"], "met": head["on_disk_budget"] >= 1_000_000},
        },
    }  # fmt: skip


def cell(figures: dict[str, float] | None) -> str:
    return "n/a" if figures is None else f"{figures['p50']:.1f} / {figures['p99']:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the machine, then memory and disk per session, then get() latency."""
    info, rows = report["machine"], report["rows"]
    memory = [
        [
            r["kind"]["name"],
            str(r["tensors"]),
            f"{r['tensor_bytes']:,}",
            f"{r['rss_per_entry']:,.0f}",
            f"{r['rss_per_entry_dict']:,.0f}",
            f"{r['in_memory_budget']:,}",
            f"{r['budget_admits']:,}",
            f"{r['file_bytes']:,}",
            f"{r['allocated_bytes']:,}",
            f"{r['on_disk_budget']:,}",
        ]
        for r in rows
    ]
    latency = [
        [
            r["kind"]["name"],
            cell(r["get_us"]["device_hit"]),
            cell(r["get_us"]["host_hit"]),
            cell(r["get_us"]["miss_from_file"]),
            f"{r['kind']['entries']:,}",
            f"{r['kind']['files']:,}",
        ]
        for r in rows
    ]
    host_note = (
        "Host-tier hits are n/a on a CPU device: both tiers are the same memory, so a host hit costs what a "
        "device hit costs."
        if info["device"] == "cpu"
        else "A host-tier hit copies the session to the device and the one it displaces back to the host."
    )
    targets = [
        f"- {t['text']}: {t['found']:,}, {'met' if t['met'] else 'not met'}."
        for t in report["targets"].values()
    ]
    return "\n".join([
        f"# Sessions in memory and on disk, {info['date']}, commit {info['commit']}",
        "",
        f"{info['cpu']}, {info['nproc']} CPUs (load average {info['load_average']:.1f} at the start), torch "
        f"{info['torch']}, device {info['device']}, file system block {info['block_size']} bytes. An "
        "initialization's tensors stand for a session's.",
        "",
        *table(["session", "tensors", "tensor bytes", "RSS per entry", "RSS per entry, dict of tensors",
                "in 4 GiB of memory", "a 4 GiB budget admits", "file bytes", "on disk", "in 4 GiB of disk"],
               memory),
        "",
        "RSS per entry: growth of a fresh process's resident memory per session put in a `SessionCache`, "
        "its key included, beside the same sessions as an OrderedDict of dicts of tensors (what the former "
        "cache held). In 4 GiB of memory: 4 GiB / RSS per entry. Budgets count tensor bytes, so a 4 GiB "
        "budget admits more sessions than 4 GiB of RAM holds. On disk: the file's blocks (st_blocks * 512).",
        "",
        *table(["session", "device-tier hit", "host-tier hit", "miss read from its file", "entries (RSS)",
                "files (misses)"], latency),
        "",
        f"`get()` in microseconds, p50 / p99. Device-tier hits: {HIT_CALLS:,} gets of random cached "
        f"sessions. Misses: memory holds 1 session in {MEMORY_SHARE} of the files, and a sweep over them "
        "misses on every get, then reads the file (`load_file`, from the page cache: just written) and puts "
        f"it, as the store does. {host_note}",
        "",
        *targets,
        "",
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the sessions held and the files")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the cache's device")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where files are written")
    ap.add_argument("--out", type=Path, help="writes OUT.{json,md} (default results/resident-DEVICE)")
    args = ap.parse_args()
    if args.scale <= 0:
        ap.error("--scale must be > 0")
    report = run(args)
    write(args.out or ROOT / "bench" / "results" / f"resident-{args.device}", report, markdown(report))


if __name__ == "__main__":
    main()
