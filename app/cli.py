"""The ``metaserve`` command line. Today: ``serve`` (the HTTP service arrives with issue #4)."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="metaserve: few-shot adaptation of meta-trained initializations.", no_args_is_help=True
)


@app.callback()
def main() -> None:
    """metaserve: few-shot adaptation of meta-trained initializations."""


@app.command()
def serve() -> None:
    """Start the HTTP service (not built yet: the engine is, see README.md)."""
    typer.echo(
        "metaserve: the HTTP service is not built yet (issue #4); the engine in app/meta is.", err=True
    )
    raise typer.Exit(code=1)
