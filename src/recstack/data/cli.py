"""`recstack data ...` (placeholder until the data module lands)."""

import typer

app = typer.Typer(no_args_is_help=True)
