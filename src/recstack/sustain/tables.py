"""The shipped carbon tables (from the ACT model, MIT licence), read with their units checked.

Every lookup that can miss names the entry and lists what is known, so a bill of materials
with a typo in a process node or a location fails with a message a user can act on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from recstack.errors import ConfigError
from recstack.spec.units import quantity

DATA_ROOT = Path(str(resources.files("recstack.sustain") / "data" / "act"))
LOCATION_TABLES = ("location_2023", "location_2022")
DEFAULT_LOCATION_TABLE = "location_2023"
DEFAULT_FAB_YIELD = 0.875
PACKAGING_G_PER_IC = 150.0  # ACT's carbon per packaged IC


def _read(rel: str, unit: str) -> dict[str, float]:
    path = DATA_ROOT / rel
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read carbon table ({e})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of name -> quantity")
    return {str(k): quantity(v, unit, f"{path.name}: {k}") for k, v in raw.items()}


@dataclass(frozen=True)
class Intensity:
    """A grid carbon intensity and where it came from."""

    g_per_kwh: float
    name: str
    table: str  # "location_2023", "source", or "given"

    def describe(self) -> str:
        return f"{self.name} {self.g_per_kwh:g} g/kWh ({self.table})"


@dataclass(frozen=True)
class CarbonTables:
    locations: dict[str, dict[str, float]]  # table -> location -> g/kWh
    sources: dict[str, float]  # energy source -> g/kWh
    epa: dict[str, float]  # node -> kWh/cm2
    gpa: dict[int, dict[str, float]]  # abatement % (95, 99) -> node -> g/cm2
    mpa: dict[str, float]  # node -> g/cm2
    dram: dict[str, float]  # g/GB
    flash: dict[str, float]
    hdd: dict[str, float]
    metals: dict[str, float]  # kg per kg
    pcb: dict[int, float]  # layers -> g/cm2
    pcb_per_layer: float  # g/cm2 per layer, for layer counts not in `pcb`
    capacitors: dict[str, float]  # kWh of manufacturing energy per g
    batteries: dict[str, float]  # g per kWh of capacity
    notes: dict[str, str] = field(default_factory=dict)

    # ---------------------------------------------------------------- lookups
    def intensity(self, name: str | float, *, table: str = DEFAULT_LOCATION_TABLE, where: str = "location") -> Intensity:
        """A location (from `table`), an energy source, or a given value ('200 g / kWh' or a number)."""
        if table not in self.locations:
            raise ConfigError(f"{where}: unknown location table {table!r} (known: {', '.join(self.locations)})")
        if isinstance(name, (int, float)) and not isinstance(name, bool):
            return Intensity(quantity(name, "", where) * 1.0, f"{name:g} g/kWh", "given")
        key = str(name).strip()
        if key.lower() in self.sources:
            return Intensity(self.sources[key.lower()], key.lower(), "source")
        if key.lower() in self.locations[table]:
            return Intensity(self.locations[table][key.lower()], key.lower(), table)
        if any(ch.isdigit() for ch in key):
            return Intensity(quantity(key, "g / kWh", where), key, "given")
        raise ConfigError(
            f"{where}: unknown location or energy source {key!r} (locations in {table}: "
            f"{', '.join(self.locations[table])}; sources: {', '.join(self.sources)}; or a value like '200 g / kWh')"
        )

    def node(self, process: str, where: str) -> str:
        if process not in self.epa:
            raise ConfigError(f"{where}: unknown process node {process!r} (known: {', '.join(self.epa)})")
        return process

    def gas(self, process: str, abatement: float, where: str) -> float:
        """Fab gas emissions per area; abatement between the 95% and 99% tables is linear (97 = midpoint, as ACT)."""
        if not 95 <= abatement <= 99:
            raise ConfigError(f"{where}: gas abatement {abatement} outside the tabulated 95..99 percent")
        w = (abatement - 95) / 4
        return (1 - w) * self.gpa[95][process] + w * self.gpa[99][process]

    def per_gb(self, kind: str, process: str, where: str) -> float:
        table = {"dram": self.dram, "flash": self.flash, "hdd": self.hdd}[kind]
        if process not in table:
            raise ConfigError(f"{where}: unknown {kind} technology {process!r} (known: {', '.join(table)})")
        return table[process]


def _metal_names(raw: dict[str, float]) -> dict[str, float]:
    out = dict(raw)
    if "alumnimum" in out:  # the upstream table's spelling; accept the usual ones too
        out.setdefault("aluminium", out["alumnimum"])
        out.setdefault("aluminum", out["alumnimum"])
    return out


@cache
def load_tables() -> CarbonTables:
    """The shipped tables (read once; immutable)."""
    pcb_raw = yaml.safe_load((DATA_ROOT / "models/materials/pcb.yaml").read_text())
    pcb = {int(k): quantity(v, "g / cm2", f"pcb.yaml: {k}") for k, v in pcb_raw.items() if k != "cpla"}
    metals_raw = yaml.safe_load((DATA_ROOT / "models/materials/materials.yaml").read_text())["materials"]
    metals = {str(k): quantity(v, "kg / kg", f"materials.yaml: {k}") for k, v in metals_raw.items()}
    return CarbonTables(
        locations={t: _read(f"models/carbon_intensity/{t}.yaml", "g / kWh") for t in LOCATION_TABLES},
        sources=_read("models/carbon_intensity/source.yaml", "g / kWh"),
        epa=_read("models/logic/epa.yaml", "kWh / cm2"),
        gpa={95: _read("models/logic/gpa_95.yaml", "g / cm2"), 99: _read("models/logic/gpa_99.yaml", "g / cm2")},
        mpa=_read("models/logic/materials.yaml", "g / cm2"),
        dram=_read("models/dram/dram_hynix.yaml", "g / GB"),
        flash={**_read("models/ssd/ssd_hynix.yaml", "g / GB"), **_read("models/ssd/ssd_seagate.yaml", "g / GB"),
               **_read("models/ssd/ssd_western.yaml", "g / GB")},
        hdd={**_read("models/hdd/hdd_consumer.yaml", "g / GB"), **_read("models/hdd/hdd_enterprise.yaml", "g / GB")},
        metals=_metal_names(metals),
        pcb=pcb,
        pcb_per_layer=quantity(pcb_raw["cpla"], "g / cm2", "pcb.yaml: cpla"),
        capacitors=_read("models/passives/capacitors.yaml", "kWh / g"),
        batteries=_read("models/materials/battery.yaml", "g / kWh"),
    )
