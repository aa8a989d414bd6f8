"""`recstack shard pool` and `recstack shard tasks`: thin commands over pool.py and tasks.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from recstack.ui import console as ui_console

if TYPE_CHECKING:
    from recstack.spec.sharding import TablePool

_Opt = typer.Option


def _write(what: str, path: Path, fn: Callable[[], Any]) -> None:
    from recstack.errors import DataError

    try:
        fn()
    except OSError as e:
        raise DataError(f"{e.filename or path}: cannot write the {what} ({e.strerror})") from None


def pool_cmd(
    out: Annotated[Path, _Opt("--out", "-o",
                              help="Pool JSON to write (TablePool); the plot goes next to it (.png).")],
    tables: Annotated[int | None, _Opt("--tables", help="Synthetic pool size (default 856, the dataset's).")] = None,
    seed: Annotated[int, _Opt("--seed", help="Seed of the synthetic pool.")] = 0,
    from_stats: Annotated[Path | None, _Opt("--from-stats",
                                            help="Fit a pool to a `recstack data stats --out` JSON.")] = None,
    from_indices: Annotated[Path | None, _Opt("--from-indices",
                                              help="Fit a pool to an index dump (rank<R>.indices.npz from "
                                                   "`recstack trace capture --save-indices`).")] = None,
    dim: Annotated[int | None, _Opt("--dim", help="Table dim (synthetic: default 16; from data: used when neither "
                                                  "the data nor --config gives dims).")] = None,
    config: Annotated[str | None, _Opt("--config", help="Model config for table names, rows and dims of a pool "
                                                        "from data (shipped name or YAML).")] = None,
    scale: Annotated[float, _Opt("--scale", help="Row scale of --config (as at capture time).")] = 1.0,
    dtype: Annotated[str, _Opt("--dtype", help="Table dtype: fp32, fp16, bf16 or int8.")] = "fp32",
    check_tables: Annotated[int, _Opt("--check-tables",
                                      help="Synthetic: tables sampled with generate_indices at batch 65536 to check "
                                           "the analytic reuse (about 16M indices at most; 0 skips).")] = 24,
    quiet: Annotated[bool, _Opt("--quiet", "-q", help="No tables on the terminal.")] = False,
) -> None:
    """A table pool: synthetic, calibrated to Meta's open DLRM dataset statistics, or fitted to your data."""
    from recstack.errors import ConfigError
    from recstack.shard.pool import (
        DEFAULT_DIM,
        make_pool,
        plot_pool,
        pool_from_indices,
        pool_from_stats,
        save_pool,
    )
    from recstack.spec.sharding import DTYPE_BYTES

    if from_stats is not None and from_indices is not None:
        raise ConfigError("--from-stats and --from-indices: give one")
    if dtype not in DTYPE_BYTES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    if out.suffix.lower() != ".json":
        raise ConfigError(f"--out {out}: the pool is JSON; give a path ending in .json")
    data = from_stats or from_indices
    if data is not None and tables is not None:
        raise ConfigError("--tables applies to synthetic pools; a pool from data has the data's tables")
    if data is None and config is not None:
        raise ConfigError("--config applies to pools from data (--from-stats / --from-indices)")
    if config is None and scale != 1.0:
        raise ConfigError("--scale applies with --config (the row scale of that model config)")
    c = ui_console()
    if from_stats is not None:
        pool = pool_from_stats(from_stats, dim=dim, config=config, scale=scale, dtype=dtype)
    elif from_indices is not None:
        pool = pool_from_indices(from_indices, dim=dim, config=config, scale=scale, dtype=dtype)
    else:
        n = 856 if tables is None else tables
        with c.status(f"calibrating a {n}-table pool (seed {seed})"):
            pool = make_pool(n, seed, dim=DEFAULT_DIM if dim is None else dim, check_tables=check_tables,
                             dtype=dtype)
    png = out.with_suffix(".png")
    _write("pool", out, lambda: save_pool(pool, out))
    _write("plot", png, lambda: plot_pool(pool, png))
    if not quiet:
        render_pool(pool, c)
    c.print(f"wrote {out} and {png}")


def render_pool(pool: TablePool, c: Console) -> None:
    """The calibration (or fit) of a pool as rich tables."""
    import numpy as np

    from recstack.shard.pool import pool_summary

    s = pool_summary(pool)
    cal = pool.calibration
    head = (f"pool {pool.name}: {len(pool.tables)} tables; reuse at batch {cal.get('batch_size', 0):,}; "
            f"mean pooling {s['pool_pooling']:.3f} ({s['ref_label']} {s['ref_pooling']:.3f}); accesses per unique "
            f"row {s['pool_apu']:.3f} ({s['ref_label']} {s['ref_apu']:.3f})")
    t = Table(title=head, box=box.SIMPLE_HEAD)
    chk = s.get("check")
    cols = ["reuse bin", s["ref_label"], "pool", "pool - " + s["ref_label"]]
    if chk:
        cols += ["check: analytic", "check: sampled"]
    for col in cols:
        t.add_column(col, justify="right")
    for i, lab in enumerate(s["bins"]):
        ref, got = s["ref_bins"][i], s["pool_bins"][i]
        row = [lab, f"{ref:.3f}", f"{got:.4f}", f"{got - ref:+.4f}"]
        if chk:
            row += [f"{chk['analytic_reuse_bins'][i]:.4f}", f"{chk['sampled_reuse_bins'][i]:.4f}"]
        t.add_row(*row)
    err = np.abs(np.asarray(s["pool_bins"]) - np.asarray(s["ref_bins"])).max()
    t.add_row("max |diff|", "", "", f"{err:.4f}", *([f"{chk['max_abs_bin_diff']:.4f}", ""] if chk else []))
    c.print(t)
    if chk:
        c.print(f"check: {len(chk['tables'])} tables sampled with generate_indices at batch {chk['batch_size']:,} "
                f"({chk['indices']:,} indices, {chk['seconds']:.1f} s): accesses per unique row "
                f"{chk['sampled_accesses_per_unique']:.3f} sampled vs {chk['analytic_accesses_per_unique']:.3f} "
                f"analytic")
    m = cal.get("marginals")
    if m:
        mt = Table(title="pool tables (quantiles)", box=box.SIMPLE_HEAD)
        for col in ("", "p5", "p25", "p50", "p75", "p95", "max"):
            mt.add_column(col, justify="right")
        for key in ("rows", "mean_bag_size", "zipf", "pooling_cv"):
            q = m[key]
            fmt = "{:,.0f}" if key == "rows" else "{:.3g}"
            mt.add_row(key, *(fmt.format(q[k]) for k in ("p5", "p25", "p50", "p75", "p95", "max")))
        c.print(mt)
        c.print(f"calibrated in {cal.get('seconds', 0):.1f} s from {cal.get('candidates')} prior candidates "
                f"(seed {cal.get('seed')}); assumptions in the JSON's calibration.assumptions")
    elif "tables" in cal:
        ft = Table(title=f"fit per table (dims: {cal.get('dim_source')}; rows: {cal.get('rows_source')})",
                   box=box.SIMPLE_HEAD)
        for col in ("table", "rows", "dim", "lookups/batch", "bag mean (data/fit)", "zipf", "max |bin err|"):
            ft.add_column(col, justify="right")
        for tb, f in list(zip(pool.tables, cal["tables"]))[:40]:
            e = f["max_abs_bin_err"]
            ft.add_row(tb.name, f"{tb.rows:,}", str(tb.dim), f"{f['lookups_per_batch']:,.0f}",
                       f"{f['bag_mean'][0]:.2f}/{f['bag_mean'][1]:.2f}", f"{tb.zipf:.3f}",
                       "-" if e is None else f"{e:.4f}")
        if len(pool.tables) > 40:
            ft.add_row(f"... {len(pool.tables) - 40} more (see the JSON)", *[""] * 6)
        c.print(ft)


def tasks_cmd(
    pool: Annotated[Path, typer.Argument(metavar="POOL", help="Pool JSON (`recstack shard pool`).")],
    out: Annotated[Path, _Opt("--out", "-o", help="Tasks JSON to write (TaskSet).")],
    tables: Annotated[int, _Opt("--tables", help="Tables per task.")] = 50,
    devices: Annotated[int, _Opt("--devices", help="Devices per task.")] = 4,
    count: Annotated[int, _Opt("--count", help="Number of tasks.")] = 50,
    split: Annotated[str, _Opt("--split", help="train or test (disjoint halves of the pool), or all.")] = "train",
    mem_gb: Annotated[float, _Opt("--mem-gb", help="Memory cap per device, GiB (2^30 bytes).")] = 5.0,
    dims: Annotated[str, _Opt("--dims", help="One dim for every table (16, DreamShard) or a set drawn per table "
                                             "(4,8,16,32,64,128, NeuroShard).")] = "16",
    seed: Annotated[int, _Opt("--seed", help="Seed of the task draws.")] = 0,
    batch_size: Annotated[int, _Opt("--batch-size", help="Batch size recorded in each task (cost measurement uses "
                                                         "it; 65536 is the published GPU batch).")] = 4096,
    split_seed: Annotated[int | None, _Opt("--split-seed", help="Seed of the train/test split (default: the "
                                                                "pool's seed).")] = None,
    dtype: Annotated[str | None, _Opt("--dtype", help="Override the tables' dtype (fp16 matches DreamShard's memory "
                                                      "accounting).")] = None,
    quiet: Annotated[bool, _Opt("--quiet", "-q", help="No table on the terminal.")] = False,
) -> None:
    """Sharding tasks: N tables from the train or test half of a pool, D devices, a memory cap."""
    from recstack.errors import ConfigError
    from recstack.shard.pool import load_pool
    from recstack.shard.tasks import GIB, generate_tasks, save_tasks

    if out.suffix.lower() != ".json":
        raise ConfigError(f"--out {out}: the tasks file is JSON; give a path ending in .json")
    p = load_pool(pool)
    ts, rep = generate_tasks(p, tables, devices, count, split, mem_gb, dims, seed, batch_size, split_seed, dtype)
    _write("tasks", out, lambda: save_tasks(ts, out))
    c = ui_console()
    if not quiet:
        t = Table(title=f"{count} tasks from {p.name} ({split}: {len(rep['split_tables'])} tables), {tables} "
                        f"tables on {devices} x {mem_gb:g} GiB, batch {batch_size:,}", box=box.SIMPLE_HEAD)
        for col in ("", "min", "median", "max"):
            t.add_column(col, justify="right")
        tb = rep["task_bytes"]
        t.add_row("task GiB", *(f"{tb[k] / GIB:.2f}" for k in ("min", "median", "max")))
        fill = rep["task_fill"]
        t.add_row(f"share of {devices} x {mem_gb:g} GiB", *(f"{fill[k]:.0%}" for k in ("min", "median", "max")))
        c.print(t)
        c.print(f"dims {','.join(map(str, rep['dims']))}; {rep['draws']} draws, {rep['rejected']} redrawn for memory "
                f"({rep['rejected_share']:.0%})")
        if rep["rejected_share"] > 0.5:
            c.print("note: most draws exceeded the memory cap, so the tasks favour small tables; a larger --mem-gb "
                    "keeps them closer to the pool's size mix")
    c.print(f"wrote {out}")
