"""The `recstack` command: one subcommand per capability. Thin: parse, call, print.

User mistakes (RecstackError, bad options, missing files) print one line and exit 2.
"""

from __future__ import annotations

import sys

import typer
from typer._click import exceptions as click_exc  # typer vendors click

from recstack.errors import RecstackError
from recstack.ui import console

app = typer.Typer(
    name="recstack",
    help="Systems toolkit for deep-learning recommendation models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    from recstack.data.cli import app as data_app
    from recstack.models.cli import app as models_app
    from recstack.shard.cli import app as shard_app
    from recstack.sustain.cli import app as carbon_app
    from recstack.trace.cli import app as trace_app
    from recstack.train.cli import cpr_experiment, demo, train

    app.add_typer(models_app, name="models", help="Shipped model configs: list and inspect.")
    app.add_typer(data_app, name="data", help="Datasets: synthesise, preprocess Criteo TSV, statistics.")
    app.command("train", help="Train a model on a data store or synthetic data.")(train)
    app.command("demo", help="Synthesise data, train a small DLRM for about a minute, report AUC.")(demo)
    app.command("cpr-experiment", help="Recovery policies (full, CPR, MFU, SSU) under the same emulated failures.")(
        cpr_experiment
    )
    app.add_typer(shard_app, name="shard",
                  help="Embedding sharding: table pools and tasks, planners, measured cost, TorchRec plans, bench.")
    app.add_typer(trace_app, name="trace",
                  help="Execution traces: capture, stats, Chakra export, replay, what-if synthesis.")
    app.add_typer(carbon_app, name="carbon",
                  help="Carbon: a run's footprint (carbon RUN_DIR), a bill of materials, a fleet what-if.")


_register()
err_console = console(stderr=True)


def main(argv: list[str] | None = None) -> None:
    try:
        rv = app(args=argv, standalone_mode=False, prog_name="recstack")
    except click_exc.UsageError as e:
        e.show()
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except RecstackError as e:
        err_console.print(f"error: {e}", markup=False)
        sys.exit(e.exit_code)
    except FileNotFoundError as e:
        err_console.print(f"error: {e.filename or e}: file not found", markup=False)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
