"""Operational carbon: energy x PUE x grid intensity, and embodied carbon amortised over a run."""

from __future__ import annotations

from recstack.errors import ConfigError
from recstack.sustain.tables import Intensity

SECONDS_PER_YEAR = 365.25 * 86400
DEFAULT_PUE = 1.1  # a hyperscale data centre; industry-wide averages are nearer 1.5


def check_pue(pue: float, where: str = "pue") -> float:
    if not 1.0 <= pue <= 5.0:
        raise ConfigError(f"{where}: PUE must be between 1.0 and 5.0, got {pue}")
    return pue


def operational_kg(energy_kwh: float, intensity: Intensity, pue: float = DEFAULT_PUE) -> float:
    """kg CO2e of `energy_kwh` drawn by the IT equipment, grossed up by the facility's PUE."""
    if energy_kwh < 0:
        raise ConfigError(f"energy must be non-negative, got {energy_kwh} kWh")
    return energy_kwh * check_pue(pue) * intensity.g_per_kwh / 1000.0


def amortised_kg(embodied_kg: float, seconds: float, lifetime_years: float) -> float:
    """The run's share of the hardware's embodied footprint: T / lifetime x embodied."""
    if seconds < 0 or lifetime_years <= 0:
        raise ConfigError(f"amortisation needs seconds >= 0 and lifetime > 0 (got {seconds} s, {lifetime_years} years)")
    return embodied_kg * seconds / (lifetime_years * SECONDS_PER_YEAR)
