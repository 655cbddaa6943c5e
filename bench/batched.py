"""Engine-level batching: sessions adapted and queried one at a time vs gathered into one batch
(``app.meta.stacked``), sessions/s measured side by side in one run, no HTTP. Engine-only (torch), so it
runs on a GPU machine with nothing else installed. Usage: ``python bench/batched.py --help``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.checkpoint import load_card, load_weights  # noqa: E402
from app.meta import InnerLoop, Learner, TaskBatch, build_net  # noqa: E402
from app.meta.flat import Flat  # noqa: E402
from app.meta.host_memory import keep_freed_memory  # noqa: E402
from app.meta.precision import use_true_float32  # noqa: E402
from app.meta.stacked import adapt_many, predict_batches  # noqa: E402
from app.meta.tasks.noise_images import noise_image_tasks  # noqa: E402
from app.meta.tasks.sinusoid import sinusoid_tasks  # noqa: E402
from bench.report import (  # noqa: E402
    cpu_name,
    device_parser,
    flops,
    machine,
    peak_gflops,
    run_on_device,
    sync,
    table,
)

TARGETS = {"cpu": {"sinusoid": 10.0, "glyphs": 2.0, "conv4-maml": 2.0}, "cuda": {"*": 100.0}}
"""Batched over one-at-a-time sessions/s: issue 6's targets at 64 sessions on a CPU, 1,024 on a GPU."""

KERNELS = ("conv", "batch_norm", "max", "clamp", "relu", "threshold", "mm", "mul", "add", "sub", "div", "sum",
           "mean", "var", "softmax", "nll", "mse", "exp", "log", "pow", "sqrt")  # fmt: skip
"""Substrings of the aten ops that compute; the rest (views, copies, allocations) and the Python around
them is what batching removes, with the per-call cost of small kernels."""

ALONE = 128
"""At most this many sessions are timed one at a time: that rate per session does not depend on how
many wait, and 1,024 of them one by one would take much of a GPU lease."""


def workloads(
    sessions: int, device: torch.device
) -> dict[str, tuple[Learner, dict[str, torch.Tensor], InnerLoop, TaskBatch]]:
    """The shipped sinusoid (MAML, 10-shot) and glyphs (ANIL, 5-way 1-shot) initializations, and the
    glyphs' Conv4 adapting every tensor (full MAML), each with ``sessions`` tasks of 10 queries."""
    found = {}
    generator = torch.Generator().manual_seed(0)
    for name, model, adapts in (
        ("sinusoid", "sinusoid", None),
        ("glyphs", "glyphs", None),
        ("conv4-maml", "glyphs", "all"),
    ):
        card = load_card(ROOT / "models" / model)
        loss = "mse" if card["family"]["kind"] == "regression" else "cross_entropy"
        learner = Learner(build_net(card["net"]), loss)
        params = {k: v.to(device) for k, v in load_weights(ROOT / "models" / model, card).items()}
        inner = InnerLoop(card["inner"]["steps"], card["inner"]["lr"], adapts or card["inner"]["adapts"])
        if name == "sinusoid":
            tasks = sinusoid_tasks(generator, sessions, shots=10, queries=10)
        else:
            tasks = noise_image_tasks(generator, sessions, ways=5, shots=1, queries=2)
        found[name] = learner, params, inner, tasks.to(device)
    return found


def sessions(
    learner: Learner, params: dict[str, torch.Tensor], inner: InnerLoop, tasks: TaskBatch
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[torch.Tensor], list[Flat]]:
    """Each task's support set and queries, and the session adapted to each support set, all at once."""
    supports = [(tasks.support_x[t], tasks.support_y[t]) for t in range(tasks.tasks)]
    queries = [tasks.query_x[t] for t in range(tasks.tasks)]
    return supports, queries, [a.changed for a in adapt_many(learner, params, supports, inner)]


def seconds(works: dict[str, Callable[[], object]], device: torch.device, repeats: int) -> dict[str, float]:
    """The median wall time of each of ``works`` over ``repeats`` rounds after one warm-up round, every
    round running each work once, synchronizing a GPU: this VM's rate drifts by a third within minutes,
    and taken in turn the drift falls on every work alike, not on whichever ran last."""
    times: dict[str, list[float]] = {k: [] for k in works}
    for _ in range(repeats + 1):
        for name, work in works.items():
            sync(device)
            started = time.perf_counter()
            work()
            sync(device)
            times[name].append(time.perf_counter() - started)
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def measure(
    name: str,
    learner: Learner,
    params: dict[str, torch.Tensor],
    inner: InnerLoop,
    tasks: TaskBatch,
    device: torch.device,
    repeats: int,
    compiled: bool,
    peak: float,
) -> dict[str, Any]:
    """Sessions/s of adapt and predict, one at a time and batched, for one workload, and the ratio each
    could reach at most were the batch's arithmetic all it took, at the machine's ``peak`` GFLOP/s; with
    ``compiled`` also batched through ``torch.compile`` (``METASERVE_COMPILE``), its compile left to the
    warm-up."""
    count = tasks.tasks
    supports, queries, changed = sessions(learner, params, inner, tasks)

    alone = min(count, ALONE)

    # One at a time is what the service does with batching off: the same calls on a batch of one.
    def adapt_alone() -> None:
        for support in supports[:alone]:
            adapt_many(learner, params, [support], inner)

    def predict_alone() -> None:
        for c, x in zip(changed[:alone], queries[:alone], strict=True):
            predict_batches(learner, params, [c], [x])

    works: dict[str, Callable[[], object]] = {
        "adapt one at a time": adapt_alone,
        "adapt batched": lambda: adapt_many(learner, params, supports, inner),
        "predict one at a time": predict_alone,
        "predict batched": lambda: predict_batches(learner, params, changed, queries),
    }
    if compiled:
        works["adapt batched, compiled"] = lambda: adapt_many(
            learner, params, supports, inner, compile_steps=True
        )
        works["predict batched, compiled"] = lambda: predict_batches(
            learner, params, changed, queries, compile_forward=True
        )
    timings = seconds(works, device, repeats)
    timings.update({k: v * count / alone for k, v in timings.items() if k.endswith("one at a time")})
    rates = {k: count / v for k, v in timings.items()}
    # A batch computes what its sessions compute alone, so one session's count times the sessions is the
    # batch's (counted on the batch, the counter takes a task-grouped convolution's backward as ungrouped).
    batch_flops = {
        "adapt": flops(lambda: adapt_many(learner, params, supports[:1], inner)) * count,
        "predict": flops(lambda: predict_batches(learner, params, changed[:1], queries[:1])) * count,
    }
    row = {
        "workload": name,
        "sessions": count,
        "sessions_per_s": rates,
        "adapt_ratio": rates["adapt batched"] / rates["adapt one at a time"],
        "predict_ratio": rates["predict batched"] / rates["predict one at a time"],
        "flops": batch_flops,
        "peak_gflops": peak,
        "ratio_ceiling": {k: timings[f"{k} one at a time"] * peak * 1e9 / n for k, n in batch_flops.items()},
    }
    if device.type == "cpu":
        row["kernel_share"] = {"adapt": kernel_share(adapt_alone), "predict": kernel_share(predict_alone)}
    if compiled:
        row["compiled_adapt_ratio"] = rates["adapt batched, compiled"] / rates["adapt batched"]
        row["compiled_predict_ratio"] = rates["predict batched, compiled"] / rates["predict batched"]
    return row


def kernel_share(work: Callable[[], object]) -> float:
    """The share of one run of ``work`` on a CPU that torch's compute kernels (``KERNELS``) take, by their
    self time under the profiler over that run's wall time (so that the VM's drift between runs cannot
    skew it; the profiler's own cost only lowers it). Where each kernel's time is its arithmetic (large
    ones), a batch that removed everything else would gain at most 1 / share."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        started = time.perf_counter()
        work()
        wall = time.perf_counter() - started
    events = profile.key_averages()
    micros = sum(e.self_cpu_time_total for e in events if e.key.startswith("aten::") and _computes(e.key))
    return micros / 1e6 / wall


def _computes(op: str) -> bool:
    """Whether the aten op named ``op`` is one of ``KERNELS``."""
    return any(k in op for k in KERNELS)


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    use_true_float32()  # as the service serves, and as it keeps freed host memory
    keep_freed_memory()
    rows = []
    for count in args.sessions:
        for name, (learner, params, inner, tasks) in workloads(count, device).items():
            if name not in args.workloads:
                continue
            # Taken beside each row's timings: this VM's rate drifts by a third within minutes.
            peak = peak_gflops(device)
            rows.append(
                measure(name, learner, params, inner, tasks, device, args.repeats, args.compile, peak)
            )
    targets = TARGETS[device.type]
    for row in rows:
        target = targets.get(row["workload"], targets.get("*"))
        row["target"] = target
        row["met"] = target is not None and min(row["adapt_ratio"], row["predict_ratio"]) >= target
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {
        "machine": machine(device=name),
        "rows": rows,
    }  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    header = ["workload", "sessions", "adapt alone /s", "adapt batched /s", "ratio", "predict alone /s",
              "predict batched /s", "ratio", "target", "adapt compiled ÷ eager",
              "predict compiled ÷ eager", "alone in kernels: adapt / predict",
              "arithmetic ceiling: adapt / predict"]  # fmt: skip
    rows = []
    for r in report["rows"]:
        s = r["sessions_per_s"]
        target = (
            "-" if r["target"] is None else f"at least {r['target']:g}x: {'met' if r['met'] else 'NOT met'}"
        )
        rates = (f"{s[k]:.0f}" for k in ("adapt one at a time", "adapt batched"))
        predict_rates = (f"{s[k]:.0f}" for k in ("predict one at a time", "predict batched"))
        compiled = [
            f"{r[k]:.2f}x" if k in r else "-" for k in ("compiled_adapt_ratio", "compiled_predict_ratio")
        ]
        shares = r.get("kernel_share")
        kernels = "-" if shares is None else " / ".join(f"{shares[k]:.0%}" for k in ("adapt", "predict"))
        ceiling = " / ".join(f"{r['ratio_ceiling'][k]:,.1f}x" for k in ("adapt", "predict"))
        ceiling += f" at {r['peak_gflops']:,.0f} GFLOP/s"
        rows.append([r["workload"], str(r["sessions"]), *rates, f"{r['adapt_ratio']:.1f}x", *predict_rates,
                     f"{r['predict_ratio']:.1f}x", target, *compiled, kernels, ceiling])  # fmt: skip
    return "\n".join([
        f"# Engine-level batching, {info['date']}, commit {info['commit']}",
        "",
        f"{info['device']}, torch {info['torch']} ({info['torch_threads']} threads). Sessions/s (median of "
        "the repeats, each round running every call once in turn) of adapting each session's support set "
        f"and predicting its 10 queries, one session at a time (at most the first {ALONE}) vs all at once, "
        "through the calls the service makes "
        "(`adapt_many`, `predict_batches`); sinusoid: 10 support points, the card's inner loop; glyphs: "
        "5-way 1-shot, the card's ANIL head-only loop; "
        "conv4-maml: the same net adapting every tensor; in true float32 (TF32 off), as the service "
        "serves. Compiled ÷ eager: the batched calls through "
        "`torch.compile` (`--compile`, the service's `METASERVE_COMPILE`) over the same calls eager. "
        "Alone in kernels (CPU): the share of the one-at-a-time time that torch's compute kernels take "
        "(their self time under the profiler). Where each kernel is large (Conv4's), a batch that removed "
        "all the rest would gain at most 1 ÷ share; tiny kernels (the sinusoid's) are mostly their own "
        "per-call cost, which batching removes too. Arithmetic ceiling: the ratio a batch would reach "
        "if it took only its arithmetic at this machine's large float32 matmul rate (the best of five "
        "2,048² products, measured just before the row's timings): the one-at-a-time time over the batch's "
        "FLOPs (its matmuls' and convolutions', one session's as `torch.utils.flop_counter` "
        "counts them, times the sessions) at that rate.",
        "",
        *table(header, rows),
        "",
    ])  # fmt: skip


def main() -> None:
    ap = device_parser(__doc__ or "", "batched")
    ap.add_argument(
        "--sessions", type=int, nargs="+", default=[64], help="sessions per batch (GPU: 1 64 1024)"
    )
    ap.add_argument(
        "--workloads", nargs="+", default=["sinusoid", "glyphs", "conv4-maml"], help="which to run"
    )
    ap.add_argument(
        "--compile", action="store_true", help="also time the batched calls through torch.compile"
    )
    run_on_device(ap, run, markdown)


if __name__ == "__main__":
    main()
