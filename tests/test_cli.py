"""The `recstack` command as a whole: help everywhere, user errors as one line with exit 2."""

from __future__ import annotations

import subprocess
import sys

from typer.main import get_command

from recstack.cli import app


def _walk(cmd, path=()):
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from _walk(sub, path + (name,))


def test_every_subcommand_has_help(run_cli):
    paths = list(_walk(get_command(app)))
    assert ("train",) in paths and ("demo",) in paths and ("models",) in paths and ("data",) in paths
    for path in paths:
        r = run_cli(*path, "--help")
        assert r.code == 0, (path, r.err)
        assert "Usage" in r.out


def test_unknown_command_exits_2(run_cli):
    assert run_cli("no-such-command").code == 2


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "recstack", "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0 and "recstack" in out.stdout


def test_short_list_cuts_at_a_name():
    from recstack.ui import short_list

    assert short_list(["t_0", "t_1"], 20) == "t_0, t_1"
    assert short_list([f"t_{i}" for i in range(10)], 20) == "t_0, t_1, t_2, ..."
