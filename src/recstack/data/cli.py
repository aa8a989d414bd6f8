"""`recstack data ...`: registers the data commands (each lives beside the code it drives)."""

from __future__ import annotations

import typer

from recstack.data.cli_preprocess import preprocess
from recstack.data.cli_synth import stats, synth

app = typer.Typer(no_args_is_help=True)
app.command("synth", help="Synthesise a dataset for a model config (store or Criteo TSV).")(synth)
app.command("preprocess", help="Preprocess Criteo-format TSV files into a binary store.")(preprocess)
app.command("stats", help="Per-table statistics of a store: pooling, unique rows, reuse bins.")(stats)
