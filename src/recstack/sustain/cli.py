"""`recstack carbon RUN_DIR | bom FILE | fleet CONFIG`: carbon reports. Thin: parse, call, print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table
from typer._click.core import Context  # typer vendors click
from typer.core import TyperGroup

from recstack.io import atomic_write_json
from recstack.spec import validate
from recstack.sustain.embodied import bom_footprint, load_bom
from recstack.sustain.fleet import FleetConfig, fleet_whatif, load_fleet, plot_fleet
from recstack.sustain.operational import DEFAULT_PUE
from recstack.sustain.report import DEFAULT_LOCATION, run_report
from recstack.sustain.tables import DEFAULT_LOCATION_TABLE
from recstack.ui import console as ui_console


class _RunDirDefault(TyperGroup):
    """`recstack carbon RUN_DIR` is short for `recstack carbon run RUN_DIR`."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


app = typer.Typer(cls=_RunDirDefault, no_args_is_help=True)


def _kg(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x / 1000:,.3f} t"
    if abs(x) >= 1:
        return f"{x:,.3f} kg"
    return f"{x * 1000:,.4g} g"


@app.command("run")
def run_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory written by `recstack train ... --energy`")],
    location: Annotated[str, typer.Option("--location", help="grid: a location, an energy source, or 'N g / kWh'")] = DEFAULT_LOCATION,
    pue: Annotated[float, typer.Option("--pue", help="data-centre power usage effectiveness")] = DEFAULT_PUE,
    table: Annotated[str, typer.Option("--ci-table", help="location table: location_2023 or location_2022")] = DEFAULT_LOCATION_TABLE,
    lifetime: Annotated[float | None, typer.Option("--lifetime-years", help="hardware life (default: the device's own)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Energy, operational carbon and the run's share of embodied carbon; writes RUN_DIR/carbon.json."""
    r = run_report(run_dir, location=location, pue=pue, location_table=table, lifetime_years=lifetime)
    atomic_write_json(Path(run_dir) / "carbon.json", r)
    if as_json:
        print(json.dumps(r, indent=2))
        return
    ci = r["intensity"]
    t = Table(title=f"carbon of {r['run']} ({r['model']})", box=box.SIMPLE_HEAD, show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_column("how")
    t.add_row("energy", f"{r['energy_kwh'] * 3.6e6:,.1f} J", f"{r['energy_method']} over {r['seconds']:.1f} s")
    for name, c in (r.get("energy_components") or {}).items():
        t.add_row(f"  {name}", f"{c['joules']:,.1f} J", c.get("source", ""))
    t.add_row("operational", _kg(r["operational_kg"]), f"x PUE {r['pue']:g} x {ci['name']} {ci['g_per_kwh']:g} g/kWh ({ci['table']})")
    how = (f"{r['devices']} x {_kg(r['embodied_device_kg'])} {r['hardware']} over {r['lifetime_years']:g} years"
           if r["embodied_device_kg"] is not None else r["embodied_note"])
    t.add_row("embodied (amortised)", _kg(r["embodied_kg"]), how)
    share = r["embodied_share"]
    t.add_row("total", _kg(r["total_kg"]), f"embodied share {share:.1%}" if share is not None else "")
    if "per_sample_g" in r:
        t.add_row("per sample", f"{r['per_sample_g']:.3g} g", "CO2e per training sample")
    if "per_query_g" in r:
        t.add_row("per query", f"{r['per_query_g']:.3g} g", "CO2e per query")
    c = ui_console()
    c.print(t)
    for n in r.get("energy_notes") or []:
        c.print(f"note: {n}")
    c.print(f"written: {Path(run_dir) / 'carbon.json'}")


@app.command("bom")
def bom_cmd(
    file: Annotated[str, typer.Argument(help="bill of materials YAML (ACT format) or a shipped name: dellr740, fairphone3")],
    table: Annotated[str, typer.Option("--ci-table", help="location table for fab grids")] = DEFAULT_LOCATION_TABLE,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Embodied footprint of a bill of materials, per component and by kind."""
    fp = bom_footprint(load_bom(file), location_table=table)
    if as_json:
        print(json.dumps(fp.to_dict(), indent=2))
        return
    t = Table(title=f"embodied carbon: {fp.name}", box=box.SIMPLE_HEAD)
    for col, right in (("component", False), ("kind", False), ("fabrication", True), ("packaging", True),
                       ("total", True), ("share", True)):
        t.add_column(col, justify="right" if right else "left")
    total = fp.total_kg
    for n, c in sorted(fp.components.items(), key=lambda kv: -kv[1].kg):
        t.add_row(n, c.kind, _kg(c.fab_g / 1000), _kg(c.packaging_g / 1000), _kg(c.kg),
                  f"{c.kg / total:.1%}" if total else "-")
    t.add_section()
    for kind, kg in sorted(fp.by_kind().items(), key=lambda kv: -kv[1]):
        t.add_row(f"all {kind}", "", "", "", _kg(kg), f"{kg / total:.1%}" if total else "-")
    t.add_row("total", "", "", "", _kg(total), "100%")
    ui_console().print(t)


@app.command("fleet")
def fleet_cmd(
    config: Annotated[Path, typer.Argument(help="fleet YAML: devices (device, count, utilisation), location, pue, years")],
    location: Annotated[str | None, typer.Option("--location", help="override the config's location")] = None,
    pue: Annotated[float | None, typer.Option("--pue", help="override the config's PUE")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="write the operational-vs-embodied chart here (PNG)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="write fleet.json (and fleet.png unless --plot) here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """What-if over years: operational vs embodied carbon of a fleet, per location, with the crossover."""
    cfg = load_fleet(config)
    upd: dict[str, Any] = {}
    if location is not None:
        upd["location"] = location
    if pue is not None:
        upd["pue"] = pue
    if upd:
        cfg = validate(FleetConfig, {**cfg.model_dump(), **upd}, "options")
    r = fleet_whatif(cfg)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "fleet.json", r)
        plot = plot or out / "fleet.png"
    if plot is not None:
        plot_fleet(r, plot)
    if as_json:
        print(json.dumps(r, indent=2))
        return
    c = ui_console()
    d = Table(title=f"fleet {r['name']}: devices", box=box.SIMPLE_HEAD)
    for col in ("device", "count", "utilisation", "mean W", "embodied each", "lifetime y", "MWh/year (x PUE)"):
        d.add_column(col, justify="left" if col == "device" else "right")
    for e in r["devices"]:
        d.add_row(e["device"], str(e["count"]), f"{e['utilisation']:.0%}", f"{e['mean_w']:.0f}",
                  _kg(e["embodied_kg_each"]), f"{e['lifetime_years']:g}", f"{e['energy_kwh_per_year'] / 1000:,.2f}")
    c.print(d)
    t = Table(title=f"operational vs embodied over one lifetime ({r['lifetime_years']:.3g} y, PUE {r['pue']:g})",
              box=box.SIMPLE_HEAD)
    for col in ("location", "table", "g/kWh", "op./year", "op./lifetime", "embodied", "emb. share", "crossover"):
        t.add_column(col, justify="left" if col in ("location", "table") else "right", no_wrap=True)
    for loc in r["locations"]:
        cross = loc["crossover_years"]
        t.add_row(loc["location"], loc["table"], f"{loc['g_per_kwh']:g}", _kg(loc["operational_kg_per_year"]),
                  _kg(loc["operational_kg_per_lifetime"]), _kg(loc["embodied_kg_per_lifetime"]),
                  f"{loc['embodied_share_over_lifetime']:.0%}",
                  f"{cross:.2f} y" if cross is not None else "never")
    c.print(t)
    c.print(f"embodied and operational carbon are equal over one lifetime at {r['break_even_g_per_kwh']:.2f} g/kWh")
    if plot is not None:
        c.print(f"plot: {plot}")
    if out is not None:
        c.print(f"written: {out / 'fleet.json'}")
