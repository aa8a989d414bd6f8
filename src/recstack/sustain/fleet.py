"""Fleet what-if: operational vs embodied carbon of a set of devices over the years.

Each device draws idle + utilisation x (TDP - idle) watts around the clock, grossed up by the
PUE, on the grid of each location compared. Hardware is bought at year 0 and replaced at the
end of every lifetime, so cumulative embodied carbon is a staircase. The crossover is when the
operational carbon of one hardware generation overtakes its embodied carbon; the break-even
intensity is the grid intensity at which the two are equal over one lifetime.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from recstack.errors import ConfigError
from recstack.spec import load_device, read_yaml, validate
from recstack.sustain.operational import SECONDS_PER_YEAR, check_pue
from recstack.sustain.report import device_embodied
from recstack.sustain.tables import DEFAULT_LOCATION_TABLE, LOCATION_TABLES, load_tables

HOURS_PER_YEAR = SECONDS_PER_YEAR / 3600


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FleetEntry(_Strict):
    device: str = Field(description="shipped hardware config name or YAML path")
    count: int = Field(gt=0)
    utilisation: float = Field(ge=0, le=1, description="mean fraction of the way from idle to TDP power")
    lifetime_years: float | None = Field(default=None, gt=0, description="default: the device's own")


class FleetConfig(_Strict):
    name: str = "fleet"
    devices: list[FleetEntry] = Field(min_length=1)
    location: str = "world"
    compare_locations: list[str] = Field(default_factory=list)
    location_table: str = DEFAULT_LOCATION_TABLE
    pue: float = Field(default=1.1, ge=1.0, le=5.0)
    years: float = Field(default=10.0, gt=0, le=50)


def load_fleet(path: str | Path) -> FleetConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: fleet config not found")
    cfg = validate(FleetConfig, read_yaml(p), p.name)
    if cfg.location_table not in LOCATION_TABLES:
        raise ConfigError(f"{p.name}: location_table: unknown {cfg.location_table!r} (known: {', '.join(LOCATION_TABLES)})")
    return cfg


def fleet_whatif(cfg: FleetConfig, *, points_per_year: int = 12) -> dict[str, Any]:
    """Per location: annual operational carbon, embodied per generation, crossover and the yearly series."""
    check_pue(cfg.pue)
    t = load_tables()
    entries = []
    for i, e in enumerate(cfg.devices):
        where = f"devices.{i}.device"
        try:
            dev = load_device(e.device)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        fp = device_embodied(dev, cfg.location_table)
        if fp is None:
            raise ConfigError(f"{where}: {dev.name} has no embodied description; add one under device.embodied")
        life = e.lifetime_years or dev.embodied.lifetime_years  # type: ignore[union-attr]
        watts = dev.idle_w + e.utilisation * (dev.tdp_w - dev.idle_w)
        entries.append({"device": dev.name, "count": e.count, "utilisation": e.utilisation, "lifetime_years": life,
                        "mean_w": watts, "embodied_kg_each": fp.total_kg,
                        "embodied_by_kind_kg": fp.by_kind(),
                        "energy_kwh_per_year": e.count * watts * HOURS_PER_YEAR / 1000 * cfg.pue})
    kwh_year = sum(x["energy_kwh_per_year"] for x in entries)
    embodied_gen = sum(x["embodied_kg_each"] * x["count"] for x in entries)
    # one lifetime for the whole fleet: the count-and-footprint weighted mean lifetime
    life = sum(x["lifetime_years"] * x["embodied_kg_each"] * x["count"] for x in entries) / embodied_gen
    lifetime_kwh = sum(x["energy_kwh_per_year"] * x["lifetime_years"] for x in entries)
    break_even = embodied_gen * 1000 / lifetime_kwh if lifetime_kwh > 0 else math.inf

    n = round(cfg.years * points_per_year)
    years = [cfg.years * k / n for k in range(n + 1)]
    emb_series = [sum(x["embodied_kg_each"] * x["count"] * (math.floor(y / x["lifetime_years"] + 1e-9) + 1)
                      for x in entries) for y in years]
    locs = list(dict.fromkeys([cfg.location, *cfg.compare_locations]))
    per_loc = []
    for loc in locs:
        ci = t.intensity(loc, table=cfg.location_table, where="location")
        op_year = kwh_year * ci.g_per_kwh / 1000
        op_life = lifetime_kwh * ci.g_per_kwh / 1000
        per_loc.append({
            "location": ci.name, "g_per_kwh": ci.g_per_kwh, "table": ci.table,
            "operational_kg_per_year": op_year,
            "operational_kg_per_lifetime": op_life,
            "embodied_kg_per_lifetime": embodied_gen,
            "embodied_share_over_lifetime": embodied_gen / (embodied_gen + op_life) if embodied_gen + op_life > 0 else None,
            "embodied_exceeds_operational": embodied_gen > op_life,
            "crossover_years": embodied_gen / op_year if op_year > 0 else None,
            "operational_series_kg": [op_year * y for y in years],
        })
    return {
        "name": cfg.name, "pue": cfg.pue, "location_table": cfg.location_table, "years": cfg.years,
        "lifetime_years": life, "devices": entries, "energy_kwh_per_year": kwh_year,
        "embodied_kg_per_generation": embodied_gen, "break_even_g_per_kwh": break_even,
        "series_years": years, "embodied_series_kg": emb_series, "locations": per_loc,
    }


def plot_fleet(result: dict[str, Any], path: str | Path) -> Path:
    """Cumulative operational carbon per location against the embodied staircase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recstack.io import save_figure

    years = result["series_years"]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.step(years, [v / 1000 for v in result["embodied_series_kg"]], where="post", color="black", lw=2.2,
            label=f"embodied (bought at year 0, replaced every {result['lifetime_years']:g} y)")
    for loc in result["locations"]:
        label = f"operational, {loc['location']} ({loc['g_per_kwh']:g} g/kWh)"
        (line,) = ax.plot(years, [v / 1000 for v in loc["operational_series_kg"]], lw=1.6, label=label)
        c = loc["crossover_years"]
        if c is not None and c <= result["years"]:
            ax.plot([c], [result["embodied_kg_per_generation"] / 1000], "o", color=line.get_color(), ms=5)
    ax.axvline(result["lifetime_years"], color="grey", ls=":", lw=1)
    ax.set_xlabel("years in service")
    ax.set_ylabel("cumulative t CO2e")
    ax.set_title(f"{result['name']}: operational vs embodied (PUE {result['pue']:g}, {result['location_table']})",
                 fontsize=10)
    # log scale: grids differ by 100x, and the clean-grid crossing is the interesting part
    ax.set_yscale("log")
    lows = [loc["operational_series_kg"][1] for loc in result["locations"] if loc["operational_series_kg"][1] > 0]
    top = max(result["embodied_series_kg"][-1], *(loc["operational_series_kg"][-1] for loc in result["locations"]))
    ax.set_ylim(min([result["embodied_kg_per_generation"], *lows]) / 1000 / 2, top / 1000 * 2)
    ax.set_xlim(0, result["years"])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
