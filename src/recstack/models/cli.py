"""`recstack models ...` (placeholder until the models module lands)."""

import typer

app = typer.Typer(no_args_is_help=True)
