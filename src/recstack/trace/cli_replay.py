"""`recstack trace replay DIR`: re-run one captured iteration from the trace alone and compare times."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from recstack.io import atomic_write_json

_Opt = typer.Option


def replay_cmd(
    trace_dir: Annotated[Path, typer.Argument(help="Capture directory (see `recstack trace capture`).")],
    iterations: Annotated[int, _Opt("--iterations", help="Timed replay iterations (median reported).")] = 20,
    warmup: Annotated[int, _Opt("--warmup", help="Untimed replay iterations first.")] = 5,
    rank: Annotated[int, _Opt("--rank", help="Which rank's trace to replay.")] = 0,
    device: Annotated[str, _Opt("--device", help="cpu or cuda.")] = "cpu",
    no_indices: Annotated[bool, _Opt("--no-indices", help="Ignore recorded indices; draw them in range.")] = False,
    top: Annotated[int, _Opt("--top", help="Operators shown in the per-operator table.")] = 15,
    as_json: Annotated[bool, _Opt("--json", help="Print JSON (captured_ms, replayed_ms, coverage, ...).")] = False,
) -> None:
    """Rebuild the top-level operators of one iteration and time them: a benchmark without model or data."""
    from recstack.errors import ConfigError
    from recstack.trace.replay import replay
    from recstack.ui import console

    if iterations < 1 or warmup < 0:
        raise ConfigError("--iterations must be >= 1 and --warmup >= 0")
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device!r}")
    r = replay(trace_dir, rank=rank, iterations=iterations, warmup=warmup, device=device, use_indices=not no_indices)
    d = r.to_dict()
    if trace_dir.is_dir():
        atomic_write_json(trace_dir / f"replay.rank{rank}.json", d)
    if as_json:
        print(json.dumps(d, indent=2))
        return
    c = console()
    t = Table(title=f"replay of {trace_dir} rank {rank}", box=box.SIMPLE_HEAD, show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    cap = r.captured_ms
    t.add_row("captured iteration (no profiler)", f"{cap:.2f} ms" if cap is not None else "-")
    if r.captured_profiled_ms is not None:
        t.add_row("captured iteration (under the profiler)", f"{r.captured_profiled_ms:.2f} ms")
    t.add_row("replayed iteration (median)", f"{r.replayed_ms:.2f} ms")
    if cap:
        t.add_row("replayed / captured", f"{r.replayed_ms / cap:.3f}")
    t.add_row("operators replayed", f"{r.replayed_ops} of {r.ops}")
    t.add_row("coverage of operator time", f"{r.coverage:.1%}")
    t.add_row("leaf tensors", ", ".join(f"{k} {v}" for k, v in r.leaves.items() if v))
    c.print(t)
    if r.per_op:
        p = Table(title="per operator (captured durations are under the profiler)", box=box.SIMPLE_HEAD)
        for col in ("operator", "count", "captured us", "replayed us", "ratio"):
            p.add_column(col, justify="left" if col == "operator" else "right")
        for row in r.per_op[:top]:
            ratio = row["replayed_us"] / row["captured_us"] if row["captured_us"] and row["replayed"] else None
            p.add_row(row["name"], str(row["count"]), f"{row['captured_us']:.1f}",
                      f"{row['replayed_us']:.1f}" if row["replayed"] else "not replayed",
                      f"{ratio:.2f}" if ratio is not None else "-")
        c.print(p)
    if r.not_rebuilt:
        c.print(f"{len(r.not_rebuilt)} operator(s) not rebuilt:")
        for x in r.not_rebuilt:
            c.print(f"  node {x['id']} {x['name']} ({x['captured_us']:.0f} us): {x['reason']}", markup=False)
