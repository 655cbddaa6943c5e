"""MAML speed: metaserve's engine beside learn2learn, higher, TorchOpt and plain PyTorch, in one run.

Runs workloads A, B and C of ``shared/anchors/bench_maml.py`` (imported, so models, task batches,
timing rules and the agreement check are the anchors' own) with our engine added as one more
implementation, writes the anchors' JSON fields plus ratios, and prints Markdown. On CUDA the same
workloads run on the GPU with synchronized timers. Usage: ``python bench/maml.py --help``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.meta import MAML, InnerLoop, Learner, TaskBatch, adapt, build_net  # noqa: E402
from app.meta.precision import use_true_float32  # noqa: E402
from bench.report import commit, flops, peak_gflops, sync, table, write  # noqa: E402


def load_anchors(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_maml", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"anchors benchmark not found at {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def metaserve_impl(anchors: ModuleType) -> type:
    """Our engine behind the anchors' ``Impl`` interface, on the anchor model's own parameter tensors."""

    class Metaserve(anchors.Impl):  # type: ignore[misc, name-defined]
        def __init__(
            self, model: torch.nn.Module, loss_fn: Callable[..., Any], lr: float, steps: int, mode: str
        ):
            super().__init__(model, loss_fn, lr, steps, mode)
            convolutional = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
            config = {"name": "conv4", "ways": 5} if convolutional else {"name": "mlp"}
            self.learner = Learner(build_net(config), "cross_entropy" if convolutional else "mse")
            ours = list(self.learner.net.state_dict())
            theirs = list(model.parameters())
            assert [self.learner.net.state_dict()[k].shape for k in ours] == [p.shape for p in theirs]
            self.names = ours
            self.inner = InnerLoop(steps, lr)
            self.algorithm = MAML(self.inner, first_order=mode == "first")
            self.compiled = mode == "none" and not convolutional

        def params(self) -> dict[str, torch.Tensor]:
            return dict(zip(self.names, self.model.parameters(), strict=True))

        def meta_loss(
            self, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, yq: torch.Tensor
        ) -> torch.Tensor:
            return self.algorithm.meta_loss(self.learner, self.params(), TaskBatch(xs, ys, xq, yq))

        def adapt(self, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            adapted = adapt(self.learner, self.params(), x, y, self.inner, compiled=self.compiled)
            return lambda query: self.learner.predict(adapted, query)

    return Metaserve


def time_meta(
    anchors: ModuleType,
    name: str,
    base: torch.nn.Module,
    workload: str,
    mode: str,
    batches: list[tuple[torch.Tensor, ...]],
    warmup: int,
    device: torch.device,
) -> list[float]:
    """The anchors' ``time_meta`` (zero_grad + meta-loss + backward + Adam step), synchronized on CUDA."""
    model = anchors.copy.deepcopy(base)
    _, _, loss_fn, lr = anchors.WORKLOADS[workload]
    impl = anchors.IMPLS[name](model, loss_fn, lr, 1, mode)
    outer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for batch in batches:
        sync(device)
        start = time.perf_counter()
        outer.zero_grad()
        impl.meta_loss(*batch).backward()
        outer.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def time_adapt(
    anchors: ModuleType,
    name: str,
    base: torch.nn.Module,
    tasks: list[list[torch.Tensor]],
    warmup: int,
    device: torch.device,
) -> list[float]:
    impl = anchors.IMPLS[name](anchors.copy.deepcopy(base), F.mse_loss, 0.01, 5, "none")
    times = []
    for xs, ys in tasks[:warmup] + tasks:
        sync(device)
        start = time.perf_counter()
        impl.adapt(xs, ys)
        sync(device)
        times.append(time.perf_counter() - start)
    return times[warmup:]


def meta_iteration_flops(
    anchors: ModuleType,
    name: str,
    base: torch.nn.Module,
    workload: str,
    mode: str,
    batch: tuple[torch.Tensor, ...],
) -> int:
    model = anchors.copy.deepcopy(base)
    _, _, loss_fn, lr = anchors.WORKLOADS[workload]
    impl = anchors.IMPLS[name](model, loss_fn, lr, 1, mode)
    return flops(lambda: impl.meta_loss(*batch).backward())


def run(args: argparse.Namespace, anchors: ModuleType) -> dict[str, Any]:
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    use_true_float32()  # so that the agreement check measures the algorithms, not TF32 rounding
    names = [n for n in args.impls.split(",") if n not in anchors.UNAVAILABLE]
    info = anchors.machine_info(args.threads)
    info.update(
        device=str(device),
        commit=commit(),
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    )
    report: dict[str, Any] = {
        "machine": info,
        "args": vars(args),
        "agreement": {},
        "results": {},
        "peak_gflops": peak_gflops(device),
    }
    workloads = args.workloads.split(",")
    for workload in [w for w in "AB" if w in workloads]:
        make_model, make_batch, _, _ = anchors.WORKLOADS[workload]
        torch.manual_seed(args.seed)
        base = make_model().to(device)
        gen = torch.Generator().manual_seed(args.seed)
        meta_batch, iters, warmup = (
            (args.a_meta_batch, args.a_iters, args.a_warmup)
            if workload == "A"
            else (args.b_meta_batch, args.b_iters, args.b_warmup)
        )
        batches = [[t.to(device) for t in make_batch(gen, meta_batch)] for _ in range(iters + warmup)]
        check_batch = [t[:8] for t in batches[0]]
        for mode in args.modes.split(","):
            key = f"{workload}-{mode}"
            report["agreement"][key] = anchors.agreement(
                names,
                lambda cls, b=base, w=workload, m=mode, c=check_batch: anchors.meta_grads(cls, b, w, m, c),
            )
            impls = {
                n: {"it_per_s": 1 / statistics.median(t), "times_s": t}
                for n, t in (
                    (n, time_meta(anchors, n, base, workload, mode, batches, warmup, device)) for n in names
                )
            }
            report["results"][key] = {"meta_batch": meta_batch, "warmup": warmup, "impls": impls}
            if workload == "B" and "metaserve" in impls:
                count = meta_iteration_flops(anchors, "metaserve", base, workload, mode, batches[0])
                report["results"][key]["flops_per_iteration"] = count
                report["results"][key]["gflops"] = {n: count * r["it_per_s"] / 1e9 for n, r in impls.items()}
            print(f"done {key}", file=sys.stderr)
    if "C" in workloads:
        torch.manual_seed(args.seed)
        base = anchors.mlp().to(device)
        gen = torch.Generator().manual_seed(args.seed)
        tasks = [[t[0].to(device) for t in anchors.sinusoid_batch(gen, 1)] for _ in range(args.c_runs)]
        report["agreement"]["C"] = anchors.agreement(
            names, lambda cls: anchors.adapted_outputs(cls, base, *tasks[0][:3])
        )
        report["results"]["C"] = {"impls": {}}
        for n in names:
            times = time_adapt(anchors, n, base, [t[:2] for t in tasks], args.c_warmup, device)
            report["results"]["C"]["impls"][n] = {
                "median_ms": 1e3 * statistics.median(times),
                "p95_ms": 1e3 * anchors.percentile(times, 95),
                "times_s": times,
            }
    return report


def markdown(report: dict[str, Any]) -> str:
    """Tables of every implementation, and our ratios against each anchor measured in the same run."""
    info = report["machine"]
    lines = [
        f"# MAML benchmark, {info['date']}, commit {info['commit']}",
        "",
        f"Device: {info['gpu'] or info['cpu']} ({info['device']}), nproc {info['nproc']}, torch threads "
        f"{info['torch_threads']}, versions {info['versions']}. Attainable float32 matmul rate: "
        f"{report['peak_gflops']:.0f} GFLOP/s.",
        "",
    ]
    for key, result in report["results"].items():
        agreement, impls = report["agreement"][key], result["impls"]
        if key == "C":
            ours = impls.get("metaserve", {}).get("median_ms")
            header = ["implementation", "median ms", "p95 ms", "metaserve latency ÷ this", "rel. err"]
            rows = [
                [
                    n,
                    f"{r['median_ms']:.3f}",
                    f"{r['p95_ms']:.3f}",
                    f"{ours / r['median_ms']:.2f}" if ours else "-",
                    f"{agreement[n]:.1e}",
                ]
                for n, r in impls.items()
            ]
        else:
            ours, gflops = impls.get("metaserve", {}).get("it_per_s"), result.get("gflops", {})
            header = [
                "implementation",
                "meta-it/s",
                "min ms/it",
                "metaserve speed ÷ this",
                "GFLOP/s",
                "rel. err",
            ]
            rows = [
                [
                    n,
                    f"{r['it_per_s']:.2f}",
                    f"{1e3 * min(r['times_s']):.1f}",
                    f"{ours / r['it_per_s']:.2f}x" if ours else "-",
                    f"{gflops[n]:.0f}" if n in gflops else "-",
                    f"{agreement[n]:.1e}" + (" MISMATCH" if agreement[n] > 1e-4 else ""),
                ]
                for n, r in impls.items()
            ]
        lines += [f"## {key}", "", *table(header, rows), ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--anchors", type=Path, default=ROOT.parent / "shared" / "anchors" / "bench_maml.py")
    ap.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "maml-cpu", help="writes OUT.json and OUT.md"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workloads", default="A,B,C")
    ap.add_argument("--impls", default="learn2learn,higher,torchopt,pytorch,torch.func,metaserve")
    ap.add_argument("--modes", default="second,first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--a-iters", type=int, default=30)
    ap.add_argument("--a-warmup", type=int, default=5)
    ap.add_argument("--a-meta-batch", type=int, default=25)
    ap.add_argument("--b-iters", type=int, default=5)
    ap.add_argument("--b-warmup", type=int, default=2)
    ap.add_argument("--b-meta-batch", type=int, default=32)
    ap.add_argument("--c-runs", type=int, default=200)
    ap.add_argument("--c-warmup", type=int, default=3, help="untimed calls first (compilation happens here)")
    args = ap.parse_args()
    anchors = load_anchors(args.anchors)
    anchors.IMPLS["metaserve"] = metaserve_impl(anchors)
    report = run(args, anchors)
    write(args.out, report, markdown(report))


if __name__ == "__main__":
    main()
