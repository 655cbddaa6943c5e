"""The ``metaserve`` command line: ``train`` and ``eval`` initializations, ``serve`` them over HTTP, manage
its API ``keys``."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
import uvicorn
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from app.checkpoint import load_card, save_card
from app.config import get_settings
from app.db.engine import make_engine, make_session_factory
from app.db.migrate import migrate
from app.evaluation import card_protocol, evaluate_model, record
from app.keys import create_key, list_keys, revoke_key
from app.logs import logging_config
from app.meta import Estimate
from app.meta.distributed import init_from_env
from app.meta.host_memory import keep_freed_memory
from app.meta.train import Progress
from app.training import TrainSpec, Validation, train

app = typer.Typer(
    help="metaserve: few-shot adaptation of meta-trained initializations.", no_args_is_help=True
)
keys = typer.Typer(help="API keys of the service (its METASERVE_* database).", no_args_is_help=True)
app.add_typer(keys, name="keys")
DEFAULTS = TrainSpec()
T = TypeVar("T")


@app.callback()
def main() -> None:
    """metaserve: few-shot adaptation of meta-trained initializations."""
    keep_freed_memory()  # for training and evaluation here; each server process does it in create_app


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to listen on (default: METASERVE_HOST).")] = None,
    port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Port to listen on (default: METASERVE_PORT).")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="Server processes sharing the port and the data directory.")
    ] = 1,
) -> None:
    """Serve the HTTP API: load the models, then answer until stopped (Ctrl-C or SIGTERM)."""
    # The address given here becomes the settings' (METASERVE_HOST, METASERVE_PORT), so that every process
    # knows where it listens (the dashboard link logged with the first admin key names it).
    os.environ.update(
        {f"METASERVE_{k}": str(v) for k, v in (("HOST", host), ("PORT", port)) if v is not None}
    )
    get_settings.cache_clear()
    settings = _checked(get_settings)
    # An import string, so that each worker process builds the app itself from the same METASERVE_* env.
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        workers=workers,
        timeout_worker_healthcheck=settings.worker_healthcheck_seconds,
        host=settings.host,
        port=settings.port,
        log_config=_log_config(workers),
    )


def _log_config(workers: int) -> dict[str, Any]:
    """Logging of every server process, uvicorn's included, in ``METASERVE_LOG_FORMAT``: the service's
    messages, one line per request (uvicorn's access log is replaced) and the job events; with several
    workers each text line names its process (JSON lines always do)."""
    return logging_config(get_settings().log_format, process_ids=workers > 1)


def _database() -> sessionmaker[Session]:
    """The service's database (migrated first, as the service would at its start)."""
    url = get_settings().database_url_resolved
    migrate(url)
    return make_session_factory(make_engine(url))


@keys.command("create")
def create_key_command(
    name: Annotated[str, typer.Argument(help="A name for the key, unique: who or what uses it.")],
    admin: Annotated[bool, typer.Option(help="May promote models and see every key's data.")] = False,
) -> None:
    """Make an API key; it is printed once, alone on the last line, and never stored (only its hash is)."""
    row, key = _checked(lambda: create_key(_database(), name, admin))
    typer.echo(f"made {'admin ' if row.admin else ''}key {row.name!r} (id {row.id}); it is shown only once:")
    typer.echo(key)


@keys.command("list")
def list_keys_command() -> None:
    """Every key: id, name, admin or not, made and revoked when; never a secret."""
    for row in list_keys(_database()):
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M:%S}" if row.revoked_at else "active"
        role = "admin" if row.admin else "user"
        typer.echo(f"{row.id}  {row.name:<24} {role:<5}  made {row.created:%Y-%m-%d %H:%M:%S}  {revoked}")


@keys.command("revoke")
def revoke_key_command(
    name_or_id: Annotated[str, typer.Argument(help="The key's name or id.")],
) -> None:
    """Revoke a key: every service process refuses it within METASERVE_KEY_CACHE_SECONDS."""
    row = _checked(lambda: revoke_key(_database(), name_or_id))
    typer.echo(f"revoked key {row.name!r} (id {row.id})")


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option(help="Directory of the initialization, e.g. models/NAME.")],
    family: Annotated[str, typer.Option(help="sinusoid, glyphs, folder or arrays.")] = DEFAULTS.family,
    data: Annotated[str | None, typer.Option(help="Dataset path for folder/arrays.")] = None,
    algo: Annotated[str, typer.Option(help="maml, fomaml, anil, metasgd or reptile.")] = DEFAULTS.algorithm,
    net: Annotated[str, typer.Option(help="auto, mlp or conv4.")] = DEFAULTS.net,
    hidden: Annotated[int, typer.Option(help="Conv4 channels / MLP width.")] = DEFAULTS.hidden,
    ways: int = DEFAULTS.ways,
    shots: int = DEFAULTS.shots,
    queries: Annotated[int, typer.Option(help="Query examples per class (per task for regression).")] = (
        DEFAULTS.queries
    ),
    meta_batch: Annotated[int, typer.Option(help="Tasks per meta-update.")] = DEFAULTS.meta_batch,
    iterations: int = DEFAULTS.iterations,
    inner_steps: int = DEFAULTS.inner_steps,
    inner_lr: float = DEFAULTS.inner_lr,
    step_loss: Annotated[str, typer.Option(help="Query loss after the 'last' step or over 'all' steps.")] = (
        DEFAULTS.step_loss
    ),
    outer_lr: Annotated[float, typer.Option(help="Adam's rate (Reptile: its epsilon).")] = DEFAULTS.outer_lr,
    seed: int = DEFAULTS.seed,
    val_every: int = DEFAULTS.val_every,
    val_tasks: int = DEFAULTS.val_tasks,
    checkpoint_every: int = DEFAULTS.checkpoint_every,
    resume: Annotated[bool, typer.Option(help="Continue the run saved in --out.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    cache_dir: Annotated[Path, typer.Option(help="Where generated families are cached.")] = Path(
        "data/cache"
    ),
) -> None:
    """Meta-train an initialization, validating and checkpointing as it goes (also under torchrun)."""
    options: dict[str, Any] = dict(
        family=family, data=data, algorithm=algo, net=net, hidden=hidden, ways=ways, shots=shots,
        queries=queries, meta_batch=meta_batch, iterations=iterations, inner_steps=inner_steps,
        inner_lr=inner_lr, step_loss=step_loss, outer_lr=outer_lr, seed=seed, val_every=val_every,
        val_tasks=val_tasks, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    spec = _checked(lambda: TrainSpec(**options))
    leader = init_from_env().rank == 0
    bar = tqdm(total=spec.iterations, desc=out.name, unit="it", dynamic_ncols=True, disable=not leader)
    figures: dict[str, str] = {}

    def on_progress(progress: Progress, validation: Validation | None) -> None:
        if bar.n == 0 and progress.iteration > 1:
            bar.update(progress.iteration - 1)
        figures["loss"] = f"{progress.loss:.3f}"
        if validation is not None:
            figures["val_loss"] = f"{validation.loss:.3f}"
            if validation.accuracy is not None:
                figures["val_acc"] = f"{validation.accuracy:.3f}"
        bar.set_postfix(figures, refresh=False)
        bar.update(1)

    card = _checked(lambda: train(spec, out, out.name, resume, device, cache_dir, on_progress))
    bar.close()
    if leader:
        typer.echo(
            f"saved {out} (sha256 {card['sha256'][:12]}…) after {card['training']['iteration']} iterations"
        )


@app.command("eval")
def eval_command(
    model: Annotated[Path, typer.Option(help="Directory of the initialization, e.g. models/sinusoid.")],
    shots: Annotated[int | None, typer.Option(help="Support examples per class (default: trained).")] = None,
    steps: Annotated[int | None, typer.Option(help="Inner steps (default: the card's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Inner lr (default: the card's).")] = None,
    tasks: int = 600,
    ways: Annotated[int | None, typer.Option(help="Ways (default: the model's head).")] = None,
    queries: Annotated[
        int | None, typer.Option(help="Query examples per class (default 15), or per task (default 100).")
    ] = None,
    split: str = "test",
    record_figures: Annotated[
        bool, typer.Option("--record", help="Write the figures into the model card.")
    ] = False,
    cache_dir: Path = Path("data/cache"),
) -> None:
    """Evaluate an initialization on held-out tasks (mean ± 95% CI) beside the baselines."""
    card = _checked(lambda: load_card(model))
    protocol = _checked(lambda: card_protocol(card, shots, steps, lr, tasks, ways, queries, split))
    results = _checked(lambda: evaluate_model(model, protocol, cache_dir))
    typer.echo(f"{model.name}: {protocol.describe()}")
    for method, metrics in results.items():
        shown = ", ".join(f"{metric} {_shown(e, metric)}" for metric, e in metrics.items())
        typer.echo(f"  {method:<24} {shown}")
    if record_figures:
        record(card, protocol, results)
        save_card(model, card)
        typer.echo(f"recorded in {model / 'card.json'} under {protocol.key!r}")


def _shown(estimate: Estimate, metric: str) -> str:
    if metric == "accuracy":
        return f"{100 * estimate.mean:.2f}% ± {100 * estimate.ci95:.2f}"
    return f"{estimate.mean:.4f} ± {estimate.ci95:.4f}"


def _checked(make: Callable[[], T]) -> T:
    """Run ``make``; a user error becomes a one-line message and exit code 2, not a traceback."""
    try:
        return make()
    except (ValueError, LookupError, FileNotFoundError, FloatingPointError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from None
