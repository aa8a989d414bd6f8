"""Bills of materials for embodied carbon, in the YAML format of the ACT model's `boms/`.

Quantities keep their written form ("46.4 mm2") so a bill round-trips; their units are checked
when the bill is loaded. Names of process nodes and carbon-intensity locations are checked
against the carbon tables by `recstack.sustain`, which knows them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from recstack.errors import ConfigError
from recstack.spec.units import quantity

Quantity = str | float | int


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check(value: Quantity, unit: str) -> Quantity:
    try:
        quantity(value, unit, "@")
    except ConfigError as e:
        raise ValueError(str(e).removeprefix("@: ")) from None
    return value


def _in(unit: str) -> AfterValidator:
    """A quantity field whose unit must convert to `unit` (checked when the bill is loaded)."""
    return AfterValidator(lambda v: _check(v, unit))


Area = Annotated[Quantity, _in("cm2")]
Capacity = Annotated[Quantity, _in("GB")]
Mass = Annotated[Quantity, _in("g")]
Energy = Annotated[Quantity, _in("kWh")]


class SiliconItem(_Strict):
    """One integrated circuit (or a group of identical ones): logic by die area, memory and storage by capacity."""

    model: Literal["logic", "dram", "flash", "hdd", "manual"] = "logic"
    area: Area | None = Field(default=None, description="die area (logic)")
    capacity: Capacity | None = Field(default=None, description="capacity (dram, flash, hdd)")
    process: str | None = Field(default=None, description="process node (logic) or memory/storage technology")
    n_ics: int = Field(default=0, ge=0, description="packaged ICs, 150 g CO2e each")
    fab_yield: float = Field(default=0.875, gt=0, le=1)
    fab_ci: str | None = Field(default=None, description="fab grid: location, source or 'N g / kWh' (logic)")
    gpa: float | None = Field(default=None, ge=95, le=99, description="fab gas abatement, percent (logic)")
    carbon: Mass | None = Field(default=None, description="given footprint (model: manual)")
    share: float = Field(default=1.0, gt=0, le=1, description="fraction attributed (e.g. a VM's slice)")
    note: str = ""

    @model_validator(mode="after")
    def _needs(self) -> SiliconItem:
        need = {"logic": ("area", "process"), "dram": ("capacity", "process"), "flash": ("capacity", "process"),
                "hdd": ("capacity", "process"), "manual": ("carbon",)}[self.model]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"model {self.model!r} needs {' and '.join(missing)}")
        return self


class PassiveItem(_Strict):
    """Passive components; capacitors are modelled from manufacturing energy per kg."""

    category: Literal["capacitor"]
    type: Literal["mlcc", "tec"]
    quantity: int = Field(default=1, ge=0)
    weight: Mass = Field(description="weight of one component")
    fab_ci: str | None = Field(default=None, description="manufacturing grid (default japan, as ACT)")


class MaterialItem(_Strict):
    """Frame and board materials: enclosure metals by weight, PCBs by area and layers, batteries by capacity."""

    category: Literal["enclosure", "pcb", "battery"]
    type: str | None = None
    quantity: int = Field(default=1, ge=0)
    weight: Mass | None = None
    area: Area | None = None
    layers: int | None = Field(default=None, gt=0)
    capacity: Energy | None = None

    @model_validator(mode="after")
    def _needs(self) -> MaterialItem:
        need = {"enclosure": ("type", "weight"), "pcb": ("area", "layers"), "battery": ("capacity",)}[self.category]
        missing = [f for f in need if getattr(self, f) is None]
        if missing:
            raise ValueError(f"category {self.category!r} needs {' and '.join(missing)}")
        return self


class BillOfMaterials(_Strict):
    name: str
    description: str = ""
    owner: str = ""
    imports: dict[str, str] = Field(default_factory=dict, description="prefix -> bill file, relative to this one")
    silicon: dict[str, SiliconItem] = Field(default_factory=dict)
    passives: dict[str, PassiveItem] = Field(default_factory=dict)
    materials: dict[str, MaterialItem] = Field(default_factory=dict)


class EmbodiedSpec(_Strict):
    """What a device is made of, for embodied carbon, with where the figures come from."""

    bom: BillOfMaterials
    lifetime_years: float = Field(default=4.0, gt=0, description="service life the footprint is amortised over")
    sources: list[str] = Field(default_factory=list)
    assumptions: list[str] = Field(default_factory=list)
