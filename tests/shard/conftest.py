"""Shared fixtures of the shard tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def shard_cli(run_cli):
    """`recstack shard ARGS...` through the real CLI entry point (exit codes, one-line errors)."""
    return lambda *args: run_cli("shard", *args)
