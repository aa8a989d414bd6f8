"""Errors a user can cause. The CLI prints them in one line and exits with code 2."""

from __future__ import annotations


class RecstackError(Exception):
    """A mistake in user input (config, file, option): message names the field, file or line."""

    exit_code = 2


class ConfigError(RecstackError):
    """A config (YAML or option) is invalid; the message names the field."""


class DataError(RecstackError):
    """An input data file is malformed or missing; the message names the file and line."""
