"""Shared fixtures of the shard tests."""

from __future__ import annotations

import pytest
import typer


@pytest.fixture
def shard_cli(run_cli, monkeypatch):
    """`run_cli` over a tiny app holding `pool` and `tasks` (the main CLI wires them as `shard ...`)."""
    from recstack import cli
    from recstack.shard.cli_pool import pool_cmd, tasks_cmd

    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
    app.command("pool")(pool_cmd)
    app.command("tasks")(tasks_cmd)
    monkeypatch.setattr(cli, "app", app)
    return run_cli
