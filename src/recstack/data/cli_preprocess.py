"""`recstack data preprocess INPUT... --out DIR`: Criteo TSV to a binary store. Thin: parse, call, print."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from recstack.data.criteo import REFERENCE_MB_PER_S, PreprocessReport, preprocess_criteo
from recstack.ui import console as ui_console


def preprocess(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Criteo TSV files in day order (one file: Kaggle-style split; several: Terabyte-style).",
                       show_default=False),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output store directory (replaced atomically).",
                                      show_default=False)],
    row_cap: Annotated[
        int | None,
        typer.Option("--row-cap", help="Hash each categorical modulo N before remapping (rows per table <= N)."),
    ] = None,
    remap: Annotated[
        str,
        typer.Option("--remap", help="frequency: contiguous ids per feature, most frequent -> 0 (two passes); "
                                     "none: keep the capped hash as the id (needs --row-cap)."),
    ] = "frequency",
    min_count: Annotated[
        int, typer.Option("--min-count", help="With frequency remap: values seen fewer times share one id.")
    ] = 1,
    split: Annotated[
        str,
        typer.Option("--split", help="auto (kaggle for one file, terabyte for several), kaggle, terabyte, none."),
    ] = "auto",
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first malformed line (exit 2).")] = False,
    workers: Annotated[int | None, typer.Option("--workers", help="Parser threads (default: up to 2).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Preprocess Criteo-format TSV files into a memory-mapped binary store."""
    err = ui_console(stderr=True)
    progress = Progress(
        TextColumn("{task.description:>8}"),
        BarColumn(),
        TextColumn("{task.fields[amount]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet or not err.is_terminal,  # bars only for people, not for logs and pipes
        transient=False,
    )
    tasks: dict[str, TaskID] = {}
    done: dict[str, int] = {}
    started: dict[str, float] = {}

    def on_progress(phase: str, advance: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total, amount="")
            done[phase], started[phase] = 0, time.perf_counter()
        done[phase] += advance
        if phase == "parse":
            rate = done[phase] / 2**20 / max(time.perf_counter() - started[phase], 1e-6)
            amount = f"{done[phase] / 2**20:,.0f}/{total / 2**20:,.0f} MiB  {rate:,.0f} MiB/s"
        else:
            amount = f"{done[phase]:,}/{total:,} samples"
        progress.update(tasks[phase], advance=advance, amount=amount)

    with progress:
        report = preprocess_criteo(
            inputs, out, row_cap=row_cap, remap=remap, min_count=min_count,  # type: ignore[arg-type]
            split=split, strict=strict, workers=workers, progress=on_progress,  # type: ignore[arg-type]
        )
    print_report(report, ui_console())


def print_report(report: PreprocessReport, console: Console | None = None) -> None:
    """The end-of-run summary: samples, skipped lines (first line numbers), speed, split sizes."""
    console = console or ui_console()
    t = Table(title="recstack data preprocess", box=box.SIMPLE_HEAD, show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("samples", f"{report.samples:,}")
    t.add_row("lines read", f"{report.lines:,}")
    lines = ", ".join(str(k) for k in report.first_skipped_lines)
    more = ", ..." if report.skipped > len(report.first_skipped_lines) else ""
    t.add_row("skipped (malformed)", f"{report.skipped:,}" + (f" (lines {lines}{more})" if lines else ""))
    t.add_row("input", f"{report.input_bytes / 2**20:,.1f} MiB in {len(report.inputs)} file(s)")
    t.add_row("time", f"{report.seconds:.2f} s")
    t.add_row("speed", f"{report.mb_per_s:,.1f} MiB/s ({report.mb_per_s / REFERENCE_MB_PER_S:,.0f}x the "
                       f"reference {REFERENCE_MB_PER_S} MB/s)")
    cap = f", row cap {report.row_cap:,}" if report.row_cap else ""
    t.add_row("ids", f"remap {report.remap}{cap}; max table rows {max(report.table_rows):,}")
    for name, (lo, hi) in report.splits.items():
        t.add_row(f"split {name}", f"{hi - lo:,} [{lo:,}, {hi:,})")
    t.add_row("store", report.out)
    console.print(t)
    if report.skipped:
        console.print(f"first skipped lines ({len(report.first_skipped)} of {report.skipped:,}):", markup=False)
        for msg in report.first_skipped:
            console.print(f"  {msg}", markup=False)
