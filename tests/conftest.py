"""Shared test helpers. Tests build small data themselves; nothing is downloaded."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")  # two xdist workers on a 2-core machine


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys):
    """Run `recstack ARGS...` in-process; returns exit code, stdout and stderr."""
    from recstack.cli import main

    def _run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = int(e.code or 0) if not isinstance(e.code, str) else 1
        cap = capsys.readouterr()
        return CliResult(code, cap.out, cap.err)

    return _run
