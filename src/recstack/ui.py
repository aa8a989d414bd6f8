"""What every command prints with: one rich console, wide enough for tables when not on a terminal."""

from __future__ import annotations

from rich.console import Console

_MIN_WIDTH = 110  # columns when output is not a terminal (pipes, CI logs), so tables are not squeezed


def console(stderr: bool = False) -> Console:
    """Rich console; at least _MIN_WIDTH columns when output is not a terminal."""
    c = Console(highlight=False, soft_wrap=True, stderr=stderr)
    if not c.is_terminal and c.width < _MIN_WIDTH:
        c = Console(highlight=False, soft_wrap=True, stderr=stderr, width=_MIN_WIDTH)
    return c


def short_list(names: list[str], width: int) -> str:
    """Comma-separated names cut at a name boundary to at most `width` characters, ", ..." marking the cut."""
    s = ", ".join(names)
    return s if len(s) <= width else s[: width - 3].rsplit(",", 1)[0] + ", ..."
