"""`recstack data synth` and `recstack data stats` (registered by recstack.data.cli). Thin."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from recstack.ui import console


def synth(
    config: Annotated[str, typer.Argument(help="Shipped model config name (see `recstack models`) or a YAML path.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (replaced atomically).")],
    samples: Annotated[int, typer.Option(help="Number of samples.")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives byte-identical output.")] = 0,
    scale: Annotated[float, typer.Option(help="Multiply every table's rows by this (at least 1 row).")] = 1.0,
    fmt: Annotated[str, typer.Option("--format", help="store (binary store) or tsv (Criteo-format text).")] = "store",
    zipf: Annotated[
        float | None, typer.Option(help="Zipf exponent for every table (default: each table's own; 0 = uniform).")
    ] = None,
    splits: Annotated[str, typer.Option(help="train,val,test fractions.")] = "0.8,0.1,0.1",
    missing_rate: Annotated[float, typer.Option(help="TSV only: share of fields left empty.")] = 0.0,
    teacher_scale: Annotated[float, typer.Option(help="Std of the teacher logit (higher: higher AUC ceiling).")] = 1.7,
    ctr: Annotated[float, typer.Option(help="Mean click rate of the teacher.")] = 0.25,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")] = False,
) -> None:
    """Synthesise a dataset for a model config, labelled by a hidden teacher of known AUC."""

    from recstack.data.synth import TeacherConfig, synthesize
    from recstack.errors import ConfigError
    from recstack.spec import load_model_spec

    try:
        fr = tuple(float(x) for x in splits.split(","))
    except ValueError:
        raise ConfigError(f"--splits: expected three comma-separated fractions, got {splits!r}") from None
    if len(fr) != 3:
        raise ConfigError(f"--splits: expected three comma-separated fractions, got {splits!r}")
    if teacher_scale <= 0:
        raise ConfigError(f"--teacher-scale must be > 0, got {teacher_scale}")
    spec = load_model_spec(config, scale)
    rep = synthesize(
        spec, out, samples, seed=seed, fmt=fmt, zipf=zipf, splits=fr, missing_rate=missing_rate,  # type: ignore[arg-type]
        teacher=TeacherConfig(scale=teacher_scale, ctr=ctr), config_name=config, scale=scale, progress=not quiet,
    )
    if quiet:
        return
    con = console()
    con.print(f"wrote {rep.samples:,} samples of {spec.name} ({spec.num_tables} tables, "
              f"{spec.dense_features} dense, {spec.num_tasks} label(s)) to {rep.out} in {rep.seconds:.1f} s")
    for k in rep.teacher_auc:
        lo, hi = rep.splits[k]
        auc = rep.teacher_auc[k]
        con.print(f"  {k:5s} [{lo:,}, {hi:,}): teacher AUC {'-' if auc is None else f'{auc:.4f}'}  "
                  f"logloss {rep.teacher_logloss[k]:.4f}  CTR {rep.ctr[k]:.4f}")


def stats(
    data: Annotated[Path, typer.Argument(help="A store directory (from `data synth` or `data preprocess`).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the statistics as JSON here.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch size for the reuse statistics.")] = 65536,
    max_samples: Annotated[int | None, typer.Option(help="Samples to examine (default: 8 batches).")] = None,
    split: Annotated[str, typer.Option(help="Split to read, or 'all'.")] = "train",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No table on the terminal.")] = False,
) -> None:
    """Per-table pooling, unique-row ratio, rows touched and the 17 reuse-factor bins."""
    from recstack.data.stats import render_stats, table_stats
    from recstack.io import atomic_write_json

    st = table_stats(data, batch_size=batch_size, max_samples=max_samples, split=None if split == "all" else split)
    if out is not None:
        atomic_write_json(out, st)
    if not quiet:
        con = console()
        render_stats(st, con)
        if out is not None:
            con.print(f"wrote {out}")
