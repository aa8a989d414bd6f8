"""`recstack trace stats` and `recstack trace synth`: thin commands over stats.py and synth.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from recstack.ui import console

_Opt = typer.Option


def _ms(us: float | None) -> str:
    return f"{us / 1e3:.2f}" if us is not None else "-"


def stats_cmd(
    trace_dir: Annotated[Path, typer.Argument(help="Capture directory (`recstack trace capture`).")],
    rank: Annotated[int | None, _Opt("--rank", help="Only this rank (default: every rank).")] = None,
    as_json: Annotated[bool, _Opt("--json", help="Print the statistics as JSON instead of tables.")] = False,
    out: Annotated[Path | None, _Opt("--out", "--plot", help="Chart path (PNG; default DIR/stats.png).")] = None,
    top: Annotated[int, _Opt("--top", help="Operators listed per rank.")] = 10,
) -> None:
    """Operator time per rank by category and by operator, critical path, gaps, iteration time."""
    from recstack.errors import ConfigError, DataError
    from recstack.io import atomic_write_json
    from recstack.trace.stats import CATEGORIES, capture_stats, plot_stats

    if top < 1:
        raise ConfigError(f"--top must be >= 1, got {top}")
    if out is not None and out.suffix.lower() != ".png":
        raise ConfigError(f"--out {out}: the chart is a PNG; give a path ending in .png")
    r = capture_stats(trace_dir, rank=rank, top=top)
    json_path = trace_dir / "stats.json"
    png = out or trace_dir / "stats.png"
    try:
        atomic_write_json(json_path, r)
        plot_stats(r, png, top=top)
    except OSError as e:
        raise DataError(f"{e.filename or trace_dir}: cannot write the results ({e.strerror})") from None
    if as_json:
        print(json.dumps(r, indent=2))
        return
    c = console()
    head = f"trace stats: {r.get('model') or trace_dir.name}"
    if r.get("batch_size"):
        head += f", batch {r['batch_size']}"
    if r.get("mode"):
        head += f", {r['mode']}"
    n_it = r["ranks"][0]["iterations"] if r["ranks"] else 0
    head += f"; mean of {n_it} captured iteration{'s' if n_it != 1 else ''}"
    if r.get("synth"):
        head += " (SYNTHESIZED)"
    t = Table(title=head, box=box.SIMPLE_HEAD)
    for col in ("rank", "iteration ms", "no profiler ms", "op ms (main)", "gaps ms", "comm wait ms",
                "critical path ms", "dataflow path ms", "ops/iter"):
        t.add_column(col, justify="right")
    for s in r["ranks"]:
        meas = s.get("measured_iteration_ms")
        t.add_row(str(s["rank"]), _ms(s["iteration_us"]), f"{meas:.2f}" if meas is not None else "-",
                  _ms(s["main_thread_op_us"]), _ms(s["gaps_us"]), _ms(s["comm_wait_us"]),
                  _ms(s["critical_path_us"]), _ms(s["dataflow_path_us"]), f"{s['ops_per_iteration']:.0f}")
    c.print(t)
    ct = Table(title="operator time by category (ms per iteration, share of operator time)", box=box.SIMPLE_HEAD)
    ct.add_column("category")
    for s in r["ranks"]:
        ct.add_column(f"rank {s['rank']}", justify="right")
    for cat in CATEGORIES:
        ct.add_row(cat, *(f"{s['categories'][cat]['us'] / 1e3:.2f} ({s['categories'][cat]['share']:.0%})"
                          for s in r["ranks"]))
    ct.add_row("all operators", *(f"{s['op_us'] / 1e3:.2f}" for s in r["ranks"]))
    c.print(ct)
    for s in r["ranks"]:
        ot = Table(title=f"rank {s['rank']}: top {min(top, len(s['operators']))} operators", box=box.SIMPLE_HEAD)
        for col in ("operator", "category", "calls/iter", "ms/iter", "mean us", "share"):
            ot.add_column(col, justify="left" if col in ("operator", "category") else "right")
        for o in s["top_operators"]:
            ot.add_row(o["name"], o["category"], f"{o['count']:g}", f"{o['total_us'] / 1e3:.3f}",
                       f"{o['mean_us']:.1f}", f"{o['share']:.1%}")
        c.print(ot)
        last = s["per_iteration"][-1]
        path = s["dataflow_path"]
        longest = sorted(path, key=lambda o: -o["duration_us"])[:4]
        c.print(f"rank {s['rank']}, last iteration: critical path {last['critical_path_us'] / 1e3:.2f} ms over "
                f"{len(s['critical_path'])} ops (data dependencies + thread order); data dependencies alone "
                f"{last['dataflow_path_us'] / 1e3:.2f} ms over {len(path)} ops, longest: "
                + ", ".join(f"{o['name']} {o['duration_us'] / 1e3:.2f} ms" for o in longest))
    c.print("gaps = iteration time not inside any main-thread operator; comm wait = the part of the gaps that a "
            "collective on another thread covers; 'no profiler' = capture.json iteration_ms"
            + (" (estimated for a synthesized capture)" if r.get("synth") else ""))
    c.print(f"written: {json_path}, {png}")


def synth_cmd(
    trace_dir: Annotated[Path, typer.Argument(help="Captured directory (`recstack trace capture`).")],
    out: Annotated[Path, _Opt("--out", help="Directory for the synthesized capture (replaced when complete).")],
    batch_size: Annotated[int | None, _Opt("--batch-size", help="New global batch size.")] = None,
    scale_rows: Annotated[float | None, _Opt("--scale-rows", help="Multiply every embedding table's rows.")] = None,
    ranks: Annotated[int | None, _Opt("--ranks", help="Number of ranks (tables re-placed, all-to-all recomputed).")]
    = None,
    pooling: Annotated[float | None, _Opt("--pooling", help="Multiply the lookups per bag (pooling factor).")]
    = None,
    as_json: Annotated[bool, _Opt("--json", help="Print the synth summary as JSON.")] = False,
) -> None:
    """Write a what-if capture (ET + Kineto per rank, capture.json) for a configuration never run."""
    from recstack.trace.synth import SynthOptions, synthesize

    meta = synthesize(trace_dir, out, SynthOptions(batch_size=batch_size, scale_rows=scale_rows, pooling=pooling,
                                                   ranks=ranks))
    syn: dict[str, Any] = meta["synth"]
    if as_json:
        print(json.dumps(syn, indent=2))
        return
    c = console()
    t = Table(title=f"trace synth: {trace_dir} -> {out} ({syn['source_world_size']} -> {meta['world_size']} ranks, "
                    f"batch {syn['source_batch_size']} -> {meta['batch_size']})", box=box.SIMPLE_HEAD)
    for col in ("rank", "from", "tables", "rows", "lookups", "emb width", "dense batch", "a2a bytes", "ms captured",
                "ms synth"):
        t.add_column(col, justify="right", no_wrap=True)
    for r in syn["ranks"]:
        t.add_row(str(r["rank"]), str(r["template_rank"]), str(r["tables"]), str(r["rows"]), str(r["lookups"]),
                  str(r["embedding_width"]), str(r["dense_batch"]),
                  ", ".join(str(b) for b in r["a2a_bytes_per_iteration"]) or "-",
                  f"{r['profiled_ms_source']:.2f}" if r["profiled_ms_source"] is not None else "-",
                  f"{r['profiled_ms']:.2f}" if r["profiled_ms"] is not None else "-")
    c.print(t)
    c.print("from = the captured rank it was made from; lookups = indices per iteration; a2a bytes = the forward, "
            "backward all-to-all payload; ms = mean profiled iteration (Kineto), captured vs synthesized")
    c.print("scaled:")
    for f in syn["fields"]:
        c.print(f"  - {f}")
    c.print(f"{syn['nodes_changed']} nodes changed, {syn['durations_scaled']} durations scaled, "
            f"{syn['nodes_inserted']} nodes inserted; rules in capture.json['synth']['rules']")
    for w in syn["warnings"]:
        c.print(f"warning: {w}")
    if syn["not_carried"]:
        c.print(f"not carried (recorded data no longer matches the shapes): {', '.join(syn['not_carried'])}")
    c.print(f"written: {out} (rank<R>.et.json, rank<R>.kineto.json, capture.json)")
