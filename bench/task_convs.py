"""Conv4's four convolutions with a weight per task (Conv4-MAML sessions), layer by layer: the task-grouped
convolution the engine runs (``layers.Conv2d``) against one batched matmul of each task's filters with its
images' unfolded patches, ``[T, O, C*9] @ [T, C*9, N*H*W]``; forward alone and forward + backward, in true
float32. On a GPU, cuDNN's grouped kernel ran 1,024 sessions' 14² layer forward in 86 ms where its arithmetic
needs about 3 (bench/README.md); this measures whether the matmul form gets nearer. Engine-only (torch).
Usage: ``python bench/task_convs.py --help``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.meta.host_memory import keep_freed_memory  # noqa: E402
from app.meta.layers import Conv2d  # noqa: E402
from app.meta.precision import use_true_float32  # noqa: E402
from bench.batched import seconds  # noqa: E402
from bench.report import cpu_name, device_parser, machine, peak_gflops, run_on_device, table  # noqa: E402

LAYERS = ((1, 28), (64, 14), (64, 7), (64, 3))
"""Conv4's input channels and image size at each of its four 3x3 convolutions (64 filters each)."""


def unfolded(x: Tensor, weight: Tensor) -> Tensor:
    """A 3x3, padding-1 convolution of task batch ``x`` ``[T, N, C, H, W]`` with weight ``[T, O, C, 3, 3]``
    as one batched matmul over every task's unfolded patches; output ``[T, N, O, H, W]`` (a view)."""
    tasks, n, channels, h, w = x.shape
    patches = F.unfold(x.flatten(0, 1), 3, padding=1).view(tasks, n, channels * 9, h * w)
    out = torch.bmm(weight.flatten(2), patches.transpose(1, 2).reshape(tasks, channels * 9, n * h * w))
    return out.view(tasks, -1, n, h, w).transpose(1, 2)


def layer(
    tasks: int, images: int, channels: int, size: int, device: torch.device, repeats: int
) -> dict[str, Any]:
    """Both forms' seconds at one layer, forward and forward + backward (to the weight, and to the input
    past the first layer, as an inner step needs), and their largest difference."""
    conv = Conv2d(channels, 64, 3, padding=1, bias=False).to(device)
    x = torch.randn(tasks, images, channels, size, size, device=device, requires_grad=channels > 1)
    weight = torch.randn(tasks, 64, channels, 3, 3, device=device, requires_grad=True)
    grad = torch.randn(tasks, images, 64, size, size, device=device)
    inputs = [weight, x] if channels > 1 else [weight]
    forms = {"grouped": lambda: conv.convolve(x, weight, None), "unfolded": lambda: unfolded(x, weight)}

    def forward(form: str) -> None:
        with torch.no_grad():
            forms[form]()

    def both(form: str) -> None:
        torch.autograd.grad(forms[form](), inputs, grad)

    with torch.no_grad():
        difference = (forms["grouped"]() - forms["unfolded"]()).abs().max().item()
    works: dict[str, Callable[[], None]] = {}
    for form in forms:
        works[f"{form} forward"] = functools.partial(forward, form)
        works[f"{form} forward + backward"] = functools.partial(both, form)
    timings = seconds(works, device, repeats)
    flops = 2 * tasks * images * size * size * 64 * channels * 9
    return {
        "channels": channels,
        "size": size,
        "seconds": timings,
        "forward_flops": flops,
        "difference": difference,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    use_true_float32()
    keep_freed_memory()
    rows = [layer(args.sessions, args.images, c, s, device, args.repeats) for c, s in LAYERS]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"machine": machine(device=name), "sessions": args.sessions, "images": args.images,
            "peak_gflops": peak_gflops(device), "rows": rows}  # fmt: skip


def markdown(report: dict[str, Any]) -> str:
    info, header = report["machine"], ["layer", "form", "forward ms", "GFLOP/s", "forward + backward ms"]
    rows = []
    for r in report["rows"]:
        name = f"{r['channels']} channel{'s' if r['channels'] > 1 else ''} at {r['size']}²"
        for form in ("grouped", "unfolded"):
            forward = r["seconds"][f"{form} forward"]
            rows.append([name, form, f"{forward * 1e3:.2f}",
                         f"{r['forward_flops'] / forward / 1e9:,.0f}",
                         f"{r['seconds'][f'{form} forward + backward'] * 1e3:.2f}"])  # fmt: skip
    return "\n".join([
        f"# Task-grouped convolutions, grouped vs unfolded, {info['date']}, commit {info['commit']}",
        "",
        f"{info['device']}, torch {info['torch']}; {report['sessions']} tasks of {report['images']} images, "
        f"each task its own 64 filters, true float32; large float32 matmul {report['peak_gflops']:,.0f} "
        "GFLOP/s. Median of the repeats. Largest difference between the forms' outputs: "
        f"{max(r['difference'] for r in report['rows']):.1e}.",
        "",
        *table(header, rows),
        "",
    ])  # fmt: skip


def main() -> None:
    ap = device_parser(__doc__ or "", "task-convs")
    ap.add_argument("--sessions", type=int, default=1024, help="tasks, each with its own weight")
    ap.add_argument("--images", type=int, default=10, help="images per task (10 queries; 5 for 5-way 1-shot)")
    run_on_device(ap, run, markdown)


if __name__ == "__main__":
    main()
