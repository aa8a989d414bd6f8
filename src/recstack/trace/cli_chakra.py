"""`recstack trace export-chakra` and `recstack trace chakra-json`: thin wrappers of trace.chakra."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

_Opt = typer.Option


def export_chakra_cmd(
    capture_dir: Annotated[Path, typer.Argument(metavar="DIR", help="Capture directory (`recstack trace capture`).")],
    out: Annotated[str, _Opt("--out", help="File prefix: writes PREFIX.<rank>.et, one per rank (ASTRA-sim's naming).")],
    iteration: Annotated[list[int] | None, _Opt(
        "--iteration", help="Export only this captured iteration (repeatable; negative counts from the end). "
                            "Default: all.")] = None,
) -> None:
    """Write the Chakra protobuf execution trace of every rank of a capture."""
    from rich import box
    from rich.table import Table

    from recstack.errors import DataError
    from recstack.trace.chakra import export_chakra, read_chakra, summarize
    from recstack.trace.load import load_ranks
    from recstack.ui import console

    if not capture_dir.exists():
        raise DataError(f"{capture_dir}: no such capture directory")
    if not capture_dir.is_dir():
        raise DataError(f"{capture_dir}: not a directory (give the capture directory, not a file)")
    graphs = load_ranks(capture_dir)
    paths = export_chakra(graphs, out, iteration or None)
    t = Table(title=f"Chakra ET export: {capture_dir} ({len(paths)} rank{'s' if len(paths) != 1 else ''})",
              box=box.SIMPLE_HEAD)
    for col in ("rank", "nodes", "COMP", "COMM_COLL", "bytes communicated", "collectives", "file"):
        t.add_column(col, justify="left" if col in ("collectives", "file") else "right")
    for g, p in zip(graphs, paths):
        _, nodes = read_chakra(p)  # what was written, read back
        s = summarize(nodes)
        colls = "\n".join(f"{k} x{v['count']}: {v['bytes']:,} B" for k, v in s["collectives"].items())
        t.add_row(str(g.rank), str(s["nodes"]), str(s["by_type"].get("COMP", 0)),
                  str(s["by_type"].get("COMM_COLL", 0)), f"{s['comm_bytes']:,}", colls or "-", p.name)
    c = console()
    c.print(t)
    c.print(f"written: {len(paths)} file{'s' if len(paths) != 1 else ''} in {paths[0].parent}")
    c.print(f"inspect one with: recstack trace chakra-json {paths[0]} --limit 20")


def chakra_json_cmd(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A Chakra ET file (.et).")],
    limit: Annotated[int | None, _Opt("--limit", help="Print only the first N nodes.")] = None,
) -> None:
    """Print a Chakra ET file as JSON: metadata, a summary and the nodes."""
    from recstack.trace.chakra import chakra_to_json

    typer.echo(json.dumps(chakra_to_json(file, limit), indent=2))
