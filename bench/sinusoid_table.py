"""The sinusoid table of Li et al. 2017 (Meta-SGD, Table 1), reproduced: each algorithm meta-trained
at K = 5, 10 and 20 shots by ``metaserve train`` (one model per K, Finn et al.'s protocol), then
``evaluate``d on 600 meta-test tasks after 1 and after 10 inner steps, beside the published figures.

Training is skipped for a model whose card says it is complete, so an interrupted run resumes.
Usage: ``python bench/sinusoid_table.py --help``.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.checkpoint import CheckpointError, load_card  # noqa: E402
from app.evaluation import Protocol, evaluate_model  # noqa: E402
from bench.report import commit, run_and_write, table  # noqa: E402

# Li et al. 2017, Table 1: MSE on 600 test tasks after one step, at K = 5, 10, 20.
PUBLISHED = {"maml": {5: 1.13, 10: 0.77, 20: 0.48}, "metasgd": {5: 0.90, 10: 0.53, 20: 0.31}}
SHOTS = (5, 10, 20)


def train_command(algorithm: str, shots: int, out: Path, iterations: int) -> list[str]:
    """Finn et al.'s recipe: 1-40-40-1 MLP, 25 tasks per batch, one inner step of 0.01, Adam 1e-3."""
    return [
        str(Path(sys.executable).with_name("metaserve")), "train", "--family", "sinusoid",
        "--algo", algorithm, "--shots", str(shots), "--queries", str(shots), "--meta-batch", "25",
        "--iterations", str(iterations),
        "--inner-steps", "1", "--inner-lr", "0.01", "--outer-lr", "0.001", "--val-every", "5000",
        "--checkpoint-every", "5000", "--out", str(out),
    ]  # fmt: skip


def finite(value: float) -> float | None:
    """None for a diverged inner loop, so the JSON stays standard (no NaN)."""
    return value if math.isfinite(value) else None


def complete(out: Path) -> bool:
    try:
        return bool(load_card(out)["training"]["complete"])
    except CheckpointError:
        return False


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for algorithm in args.algos.split(","):
        for shots in SHOTS:
            out = args.models / f"{algorithm}-k{shots}"
            if not complete(out):
                resume = ["--resume"] if (out / "card.json").exists() else []
                subprocess.run(train_command(algorithm, shots, out, args.iterations) + resume, check=True)
            for steps in (1, 10):
                protocol = Protocol(ways=1, shots=shots, steps=steps, lr=0.01, tasks=args.tasks, queries=100)
                results = evaluate_model(out, protocol)
                rows.append(
                    {
                        "algorithm": algorithm,
                        "shots": shots,
                        "steps": steps,
                        "mse": finite(results["metaserve"]["loss"].mean),
                        "ci95": finite(results["metaserve"]["loss"].ci95),
                        "random_init_mse": results["random init"]["loss"].mean,
                        "published": PUBLISHED.get(algorithm, {}).get(shots) if steps == 1 else None,
                        "training_seconds": load_card(out)["training"]["seconds"],
                    }
                )
                print(rows[-1], flush=True)
    return {
        "machine": {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "commit": commit(),
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
        },
        "protocol": f"{args.tasks} meta-test tasks, 100 query points each, inner lr 0.01 (Meta-SGD: learned)",
        "iterations": args.iterations,
        "rows": rows,
    }


def shown(row: dict[str, Any]) -> str:
    """MSE ± CI, or the fact that the inner loop diverged (Meta-SGD's learned rates, stepped 10 times)."""
    return "diverges (nan)" if row["mse"] is None else f"{row['mse']:.3f} ± {row['ci95']:.3f}"


def markdown(report: dict[str, Any]) -> str:
    info = report["machine"]
    lines = [
        f"# Sinusoid regression, {info['date']}, commit {info['commit']}",
        "",
        f"{report['protocol']}; each model meta-trained {report['iterations']} iterations at its K on "
        f"{info['cpu']} (torch {info['torch']}). MSE ± 95% CI; published: Li et al. 2017, Table 1.",
        "",
    ]
    header = ["algorithm", "K", "1 step", "10 steps", "published (1 step)", "random init, 1 step"]
    body = []
    by_key = {(r["algorithm"], r["shots"], r["steps"]): r for r in report["rows"]}
    for algorithm, shots in dict.fromkeys((r["algorithm"], r["shots"]) for r in report["rows"]):
        one, ten = by_key[(algorithm, shots, 1)], by_key[(algorithm, shots, 10)]
        published = one["published"]
        body.append(
            [
                algorithm,
                str(shots),
                shown(one),
                shown(ten),
                "-" if published is None else f"{published:.2f}",
                f"{one['random_init_mse']:.2f}",
            ]
        )
    return "\n".join([*lines, *table(header, body), ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algos", default="maml,metasgd", help="comma-separated algorithms")
    ap.add_argument("--iterations", type=int, default=70_000, help="Finn et al. trained 70,000")
    ap.add_argument("--tasks", type=int, default=600)
    ap.add_argument("--models", type=Path, default=ROOT / "data" / "sinusoid-table")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "sinusoid-table")
    args = ap.parse_args()
    run_and_write(args, run, markdown)


if __name__ == "__main__":
    main()
