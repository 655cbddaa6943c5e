"""Where one batched ``predict_batches`` (or ``adapt_many``) call spends its time: torch's profiler over the
call, its kernels ranked by their own time on the device (CPU or CUDA). The figures bench/README.md quotes
for 1,024 glyph predictions on a GPU and for 64 Conv4-MAML adaptations on a CPU come from it. Usage:
``python bench/profile_batch.py --help``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.meta.host_memory import keep_freed_memory  # noqa: E402
from app.meta.precision import use_true_float32  # noqa: E402
from app.meta.stacked import adapt_many, predict_batches  # noqa: E402
from bench.batched import sessions as batched_sessions  # noqa: E402
from bench.batched import workloads  # noqa: E402
from bench.report import sync  # noqa: E402


def profile(name: str, sessions: int, device: torch.device, rows: int, call: str) -> str:
    """The profile table of one batched ``call`` ("predict" or "adapt") of ``sessions`` sessions of
    workload ``name``, after three warm-up calls, headed by its wall time and its ops' own time on the
    device (a GPU's kernels)."""
    learner, params, inner, tasks = workloads(sessions, device)[name]
    supports, queries, changed = batched_sessions(learner, params, inner, tasks)

    def batched() -> object:
        if call == "adapt":
            return adapt_many(learner, params, supports, inner)
        return predict_batches(learner, params, changed, queries)

    for _ in range(3):
        batched()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    sync(device)
    with torch.profiler.profile(activities=activities) as run:
        started = time.perf_counter()
        batched()
        sync(device)
        wall = time.perf_counter() - started
    events = run.key_averages()
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    own = sum(getattr(e, sort) for e in events) / 1e3
    head = f"## {name} {call}, {sessions} sessions: {wall * 1e3:.1f} ms profiled, ops' own {own:.1f} ms"
    return f"{head}\n{events.table(sort_by=sort, row_limit=rows, max_name_column_width=60)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sessions", type=int, default=1024)
    ap.add_argument("--workloads", nargs="+", default=["glyphs", "conv4-maml"], help="see bench/batched.py")
    ap.add_argument("--rows", type=int, default=14, help="kernels listed per workload")
    ap.add_argument("--call", choices=["predict", "adapt"], default="predict", help="which batched call")
    args = ap.parse_args()
    use_true_float32()  # as the service serves, and as it keeps freed host memory
    keep_freed_memory()
    for name in args.workloads:
        print(profile(name, args.sessions, torch.device(args.device), args.rows, args.call))


if __name__ == "__main__":
    main()
