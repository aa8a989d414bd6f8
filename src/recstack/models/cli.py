"""`recstack models list` and `recstack models show NAME`: sizes and compute of model configs."""

from __future__ import annotations

import json

import typer
from rich import box
from rich.table import Table

from recstack.models.describe import describe
from recstack.spec import list_model_configs, load_model_spec
from recstack.ui import console as ui_console

app = typer.Typer(no_args_is_help=True)


def _si(x: float) -> str:
    """Compact count: 1234567 -> 1.23M."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}" if isinstance(x, float) and not float(x).is_integer() else str(int(x))


@app.command("list")
def list_models() -> None:
    """Every shipped model config with its size and dense compute."""
    table = Table(title="shipped model configs", box=box.SIMPLE_HEAD)
    for col, right in (("name", False), ("family", False), ("interaction", False), ("tables", True),
                       ("params", True), ("embedding GB", True), ("dense FLOPs/sample", True)):
        table.add_column(col, justify="right" if right else "left", no_wrap=True)
    for name in list_model_configs():
        d = describe(load_model_spec(name))
        table.add_row(
            name, d["family"], d["interaction"], str(d["num_tables"]), _si(d["params"]),
            f"{d['embedding_bytes'] / 1e9:.3f}", _si(d["dense_flops_per_sample"]),
        )
    ui_console().print(table)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="shipped config name (see `recstack models list`) or YAML path"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of tables"),
    scale: float = typer.Option(1.0, "--scale", help="multiply every table's rows by this factor"),
) -> None:
    """Parameters, embedding memory, per-sample FLOPs and lookups, and the dense layer shapes."""
    spec = load_model_spec(name, scale=scale)
    d = describe(spec)
    if as_json:
        print(json.dumps(d, indent=2))
        return
    summary = Table(title=f"{spec.name} ({spec.family}, {spec.interaction})" + (f", scale {scale:g}" if scale != 1 else ""))
    summary.add_column("quantity")
    summary.add_column("value", justify="right")
    summary.add_column("", justify="right")
    rows = [
        ("tables", d["num_tables"], ""),
        ("params (total)", f"{d['params']:,}", _si(d["params"])),
        ("embedding params", f"{d['embedding_params']:,}", _si(d["embedding_params"])),
        ("dense params", f"{d['dense_params']:,}", _si(d["dense_params"])),
        ("embedding rows", f"{d['embedding_rows']:,}", _si(d["embedding_rows"])),
        ("embedding bytes", f"{d['embedding_bytes']:,}", f"{d['embedding_bytes'] / 1e9:.3f} GB"),
        ("dense FLOPs / sample", f"{d['dense_flops_per_sample']:,}", _si(d["dense_flops_per_sample"])),
        ("embedding lookups / sample", f"{d['embedding_lookups_per_sample']:g}", ""),
        ("embedding bytes read / sample", f"{d['embedding_bytes_per_sample']:,.0f}", ""),
    ]
    for r in rows:
        summary.add_row(str(r[0]), str(r[1]), str(r[2]))
    console = ui_console()
    console.print(summary)
    layers = Table(title="dense layers (forward order)")
    layers.add_column("layer")
    layers.add_column("shape (in x out)")
    layers.add_column("params", justify="right")
    layers.add_column("MACs/sample", justify="right")
    for layer in d["layers"]:
        layers.add_row(layer["name"], layer["shape"], f"{layer['params']:,}", f"{layer['macs']:,}")
    console.print(layers)
