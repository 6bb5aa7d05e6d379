"""One module per CLI command: thin typer functions, heavy imports inside them."""

from __future__ import annotations

import contextlib
from typing import Iterator

import typer


@contextlib.contextmanager
def user_errors(*expected: type[BaseException]) -> Iterator[None]:
    """Expected failures (bad input, output conflicts, refused checkpoints) become
    one ``error:`` line and exit code 2 instead of a traceback."""
    from ..model.folder import CheckpointError

    try:
        yield
    except (CheckpointError, *expected) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2)
