"""What every command prints with: one rich console, wide enough for tables when not on a terminal."""

from __future__ import annotations

from rich.console import Console


def console(stderr: bool = False, min_width: int = 110) -> Console:
    """Rich console; at least `min_width` columns when output is not a terminal so tables are not squeezed."""
    c = Console(highlight=False, soft_wrap=True, stderr=stderr)
    if not c.is_terminal and c.width < min_width:
        c = Console(highlight=False, soft_wrap=True, stderr=stderr, width=min_width)
    return c
