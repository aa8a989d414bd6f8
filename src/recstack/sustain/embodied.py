"""Embodied carbon of hardware from a bill of materials (the ACT model).

Logic: area x (CI_fab x EPA + GPA + MPA) / yield, plus 150 g per packaged IC. Memory and
storage: capacity x carbon per GB / yield, plus packaging. Capacitors: manufacturing energy per
kg x weight x the manufacturing grid's intensity. Enclosure metals by weight, PCBs by area and
layer count, batteries by capacity.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recstack.errors import ConfigError
from recstack.spec import read_yaml, validate
from recstack.spec.bom import BillOfMaterials, MaterialItem, PassiveItem, SiliconItem
from recstack.spec.units import quantity
from recstack.sustain.tables import (
    DATA_ROOT,
    DEFAULT_FAB_YIELD,
    DEFAULT_LOCATION_TABLE,
    PACKAGING_G_PER_IC,
    CarbonTables,
    load_tables,
)

DEFAULT_GPA = 97.0  # ACT's default abatement
DEFAULT_FAB_CI = "taiwan"  # ACT's default logic fab location
DEFAULT_PASSIVES_CI = "japan"  # ACT's default for passive components


@dataclass(frozen=True)
class ComponentFootprint:
    name: str
    kind: str
    fab_g: float
    packaging_g: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def kg(self) -> float:
        return (self.fab_g + self.packaging_g) / 1000.0

    def to_dict(self) -> dict[str, Any]:
        return {"kg": self.kg, "kind": self.kind, "fab_kg": self.fab_g / 1000, "packaging_kg": self.packaging_g / 1000,
                **self.detail}


@dataclass(frozen=True)
class BomFootprint:
    name: str
    components: dict[str, ComponentFootprint]
    location_table: str

    @property
    def total_kg(self) -> float:
        return sum(c.kg for c in self.components.values())

    def group_kg(self, prefix: str) -> float:
        """Sum over components named `prefix` or `prefix.*` / `prefix<digits>` (ACT groups by name prefix)."""
        return sum(c.kg for n, c in self.components.items() if _in_group(n, prefix))

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for c in self.components.values():
            out[c.kind] = out.get(c.kind, 0.0) + c.kg
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "total_kg": self.total_kg, "location_table": self.location_table,
                "by_kind": self.by_kind(), "components": {n: c.to_dict() for n, c in self.components.items()}}


def _in_group(name: str, prefix: str) -> bool:
    if name == prefix or name.startswith(prefix + "."):
        return True
    rest = name[len(prefix):] if name.startswith(prefix) else None
    return bool(rest) and rest.isdigit() if rest is not None else False


# ---------------------------------------------------------------- per-area and per-item models
def carbon_per_area(process: str, *, gpa: float = DEFAULT_GPA, fab_ci: str | float = DEFAULT_FAB_CI,
                    fab_yield: float = DEFAULT_FAB_YIELD, location_table: str = DEFAULT_LOCATION_TABLE,
                    tables: CarbonTables | None = None, where: str = "logic") -> dict[str, Any]:
    """g CO2e per cm2 of good die, with its parts (fab energy, gases, materials) before yield."""
    t = tables or load_tables()
    node = t.node(process, f"{where}: process")
    if not 0 < fab_yield <= 1:
        raise ConfigError(f"{where}: fab_yield must be in (0, 1], got {fab_yield}")
    ci = t.intensity(fab_ci, table=location_table, where=f"{where}: fab_ci")
    energy = ci.g_per_kwh * t.epa[node]
    gas = t.gas(node, gpa, f"{where}: gpa")
    materials = t.mpa[node]
    return {"g_per_cm2": (energy + gas + materials) / fab_yield, "energy_g_per_cm2": energy, "gas_g_per_cm2": gas,
            "materials_g_per_cm2": materials, "fab_yield": fab_yield, "fab_ci": ci.describe(), "gpa": gpa}


def silicon_footprint(name: str, item: SiliconItem, t: CarbonTables, location_table: str, where: str) -> ComponentFootprint:
    packaging = item.n_ics * PACKAGING_G_PER_IC * item.share
    if item.model == "logic":
        area = quantity(item.area, "cm2", f"{where}.area")
        cpa = carbon_per_area(item.process or "", gpa=item.gpa if item.gpa is not None else DEFAULT_GPA,
                              fab_ci=item.fab_ci or DEFAULT_FAB_CI, fab_yield=item.fab_yield,
                              location_table=location_table, tables=t, where=where)
        return ComponentFootprint(name, "logic", area * cpa["g_per_cm2"] * item.share, packaging,
                                  {"area_cm2": area, "process": item.process, **cpa, "share": item.share})
    if item.model == "manual":
        return ComponentFootprint(name, "manual", quantity(item.carbon, "g", f"{where}.carbon") * item.share,
                                  packaging, {"share": item.share})
    cap = quantity(item.capacity, "GB", f"{where}.capacity")
    per_gb = t.per_gb(item.model, item.process or "", f"{where}.process")
    return ComponentFootprint(name, item.model, cap * per_gb / item.fab_yield * item.share, packaging,
                              {"capacity_gb": cap, "process": item.process, "g_per_gb": per_gb,
                               "fab_yield": item.fab_yield, "share": item.share})


def passive_footprint(name: str, item: PassiveItem, t: CarbonTables, location_table: str, where: str) -> ComponentFootprint:
    ci = t.intensity(item.fab_ci or DEFAULT_PASSIVES_CI, table=location_table, where=f"{where}.fab_ci")
    weight = quantity(item.weight, "g", f"{where}.weight")
    kwh = t.capacitors[item.type] * weight * item.quantity
    return ComponentFootprint(name, "capacitor", kwh * ci.g_per_kwh,
                              detail={"energy_kwh": kwh, "fab_ci": ci.describe(), "quantity": item.quantity})


def material_footprint(name: str, item: MaterialItem, t: CarbonTables, where: str) -> ComponentFootprint:
    if item.category == "enclosure":
        metal = (item.type or "").lower()
        if metal not in t.metals:
            raise ConfigError(f"{where}.type: unknown material {item.type!r} (known: {', '.join(t.metals)})")
        weight = quantity(item.weight, "g", f"{where}.weight")
        return ComponentFootprint(name, "enclosure", weight * t.metals[metal] * item.quantity,
                                  detail={"weight_g": weight, "material": metal})
    if item.category == "pcb":
        area = quantity(item.area, "cm2", f"{where}.area")
        layers = item.layers or 0
        cpa = t.pcb.get(layers, t.pcb_per_layer * layers)
        return ComponentFootprint(name, "pcb", area * cpa * item.quantity,
                                  detail={"area_cm2": area, "layers": layers, "g_per_cm2": cpa,
                                          "interpolated": layers not in t.pcb})
    chem = (item.type or "NMC").upper()
    if chem not in t.batteries:
        raise ConfigError(f"{where}.type: unknown battery chemistry {item.type!r} (known: {', '.join(t.batteries)})")
    kwh = quantity(item.capacity, "kWh", f"{where}.capacity")
    return ComponentFootprint(name, "battery", kwh * t.batteries[chem] * item.quantity,
                              detail={"capacity_kwh": kwh, "chemistry": chem})


def bom_footprint(bom: BillOfMaterials, *, location_table: str = DEFAULT_LOCATION_TABLE,
                  tables: CarbonTables | None = None) -> BomFootprint:
    """Footprint of every component of `bom` (imports must already be merged: see `load_bom`)."""
    t = tables or load_tables()
    if bom.imports:
        raise ConfigError(f"{bom.name}: imports not resolved; load the bill with recstack.sustain.load_bom")
    comps: dict[str, ComponentFootprint] = {}
    for n, s in bom.silicon.items():
        comps[n] = silicon_footprint(n, s, t, location_table, f"{bom.name}: silicon.{n}")
    for n, p in bom.passives.items():
        comps[n] = passive_footprint(n, p, t, location_table, f"{bom.name}: passives.{n}")
    for n, m in bom.materials.items():
        comps[n] = material_footprint(n, m, t, f"{bom.name}: materials.{n}")
    return BomFootprint(bom.name, comps, location_table)


# ---------------------------------------------------------------- loading bills
def shipped_boms() -> dict[str, Path]:
    return {p.stem: p for p in sorted((DATA_ROOT / "boms").glob("*.yaml"))}


def load_bom(name_or_path: str | Path, _seen: tuple[Path, ...] = ()) -> BillOfMaterials:
    """A bill from a YAML file or a shipped name (dellr740, fairphone3), with `imports` merged in
    as `<prefix>.<name>` entries (as ACT does), recursively, refusing cycles."""
    s = str(name_or_path)
    shipped = shipped_boms()
    path = shipped[s] if s in shipped else Path(s)
    if not path.is_file():
        raise ConfigError(f"{s}: bill of materials not found (shipped: {', '.join(shipped)})")
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path.name}: imports itself (cycle {' -> '.join(p.name for p in (*_seen, path))})")
    data = read_yaml(path)
    bom = validate(BillOfMaterials, data, path.name)
    if not bom.imports:
        return bom
    silicon, passives, materials = dict(bom.silicon), dict(bom.passives), dict(bom.materials)
    for prefix, rel in bom.imports.items():
        sub = load_bom(path.parent / rel, (*_seen, path))
        for dst, src in ((silicon, sub.silicon), (passives, sub.passives), (materials, sub.materials)):
            for n, item in src.items():
                key = f"{prefix}.{n}"
                if key in dst:
                    raise ConfigError(f"{path.name}: imported entry {key!r} clashes with an entry of the same name")
                dst[key] = item  # type: ignore[assignment]
    return bom.model_copy(update={"imports": {}, "silicon": silicon, "passives": passives, "materials": materials})
