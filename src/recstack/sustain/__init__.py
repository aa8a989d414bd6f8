"""Energy meters and the carbon model: operational (energy x PUE x grid) and embodied (ACT bills of materials)."""

from recstack.sustain.embodied import (
    BomFootprint,
    ComponentFootprint,
    bom_footprint,
    carbon_per_area,
    load_bom,
    shipped_boms,
)
from recstack.sustain.fleet import FleetConfig, FleetEntry, fleet_whatif, load_fleet, plot_fleet
from recstack.sustain.meters import ComponentEnergy, EnergyMeter, EnergyReport, detect_hardware
from recstack.sustain.operational import DEFAULT_PUE, amortised_kg, operational_kg
from recstack.sustain.report import device_embodied, run_report
from recstack.sustain.tables import CarbonTables, Intensity, load_tables

__all__ = [
    "DEFAULT_PUE", "BomFootprint", "CarbonTables", "ComponentEnergy", "ComponentFootprint", "EnergyMeter",
    "EnergyReport", "FleetConfig", "FleetEntry", "Intensity",
    "amortised_kg", "bom_footprint", "carbon_per_area", "detect_hardware", "device_embodied", "fleet_whatif", "load_bom",
    "load_fleet", "load_tables", "operational_kg", "plot_fleet", "run_report", "shipped_boms",
]
