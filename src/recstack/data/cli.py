"""`recstack data ...`: registers the data commands (each lives beside the code it drives)."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


def _register() -> None:
    try:
        from recstack.data.cli_preprocess import preprocess
    except ImportError:  # module still being written
        preprocess = None
    try:
        from recstack.data.cli_synth import stats, synth
    except ImportError:
        synth = stats = None
    if synth is not None:
        app.command("synth", help="Synthesise a dataset for a model config (store or Criteo TSV).")(synth)
    if preprocess is not None:
        app.command("preprocess", help="Preprocess Criteo-format TSV files into a binary store.")(preprocess)
    if stats is not None:
        app.command("stats", help="Per-table statistics of a store: pooling, unique rows, reuse bins.")(stats)


_register()
