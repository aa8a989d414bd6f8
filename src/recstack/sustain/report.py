"""Carbon report of one recstack run: its metered energy and its share of the hardware's embodied carbon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recstack.errors import ConfigError, DataError
from recstack.io import read_json
from recstack.spec import DeviceSpec, load_device
from recstack.sustain.embodied import BomFootprint, bom_footprint
from recstack.sustain.operational import DEFAULT_PUE, amortised_kg, check_pue, operational_kg
from recstack.sustain.tables import DEFAULT_LOCATION_TABLE, load_tables

DEFAULT_LOCATION = "world"


def device_embodied(device: DeviceSpec, location_table: str = DEFAULT_LOCATION_TABLE) -> BomFootprint | None:
    """Embodied footprint of one device from its shipped description (None when it has none)."""
    if device.embodied is None:
        return None
    return bom_footprint(device.embodied.bom, location_table=location_table)


def _summary(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "summary.json"
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run directory")
    if not p.is_file():
        raise ConfigError(f"{run_dir}: no summary.json (is this a finished recstack run?)")
    data = read_json(p, "run summary")
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected a JSON object")
    return data


def run_report(run_dir: str | Path, *, location: str | float = DEFAULT_LOCATION, pue: float = DEFAULT_PUE,
               location_table: str = DEFAULT_LOCATION_TABLE, lifetime_years: float | None = None) -> dict[str, Any]:
    """Energy, operational and amortised embodied carbon of a run metered with `--energy`."""
    run = Path(run_dir)
    s = _summary(run)
    energy = s.get("energy")
    if not isinstance(energy, dict) or "total_j" not in energy:
        raise ConfigError(f"{run}: the run has no energy record; rerun it with --energy")
    check_pue(pue, "--pue")
    intensity = load_tables().intensity(location, table=location_table, where="--location")
    kwh = float(energy["total_j"]) / 3.6e6
    op = operational_kg(kwh, intensity, pue)
    hw_name = energy.get("hardware") or "cpu-2core"
    device = load_device(hw_name)
    n_dev = int(s.get("world_size") or 1) if device.kind == "gpu" else 1
    seconds = float(energy.get("seconds") or s.get("seconds") or 0.0)
    emb = device_embodied(device, location_table)
    life = lifetime_years if lifetime_years is not None else (device.embodied.lifetime_years if device.embodied else None)
    if life is not None and life <= 0:
        raise ConfigError(f"--lifetime-years must be positive, got {life}")
    emb_dev_kg = emb.total_kg if emb is not None else None
    emb_kg = amortised_kg(emb_dev_kg * n_dev, seconds, life) if emb_dev_kg is not None and life else 0.0
    total = op + emb_kg
    out: dict[str, Any] = {
        "run": str(run),
        "model": s.get("model"),
        "hardware": hw_name,
        "devices": n_dev,
        "seconds": seconds,
        "energy_kwh": kwh,
        "energy_method": energy.get("method"),
        "energy_components": energy.get("components"),
        "energy_notes": energy.get("notes", []),
        "pue": pue,
        "intensity": {"name": intensity.name, "g_per_kwh": intensity.g_per_kwh, "table": intensity.table},
        "operational_kg": op,
        "embodied_device_kg": emb_dev_kg,
        "lifetime_years": life,
        "embodied_kg": emb_kg,
        "embodied_note": None if emb is not None else f"device {hw_name} has no embodied description: embodied counted as 0",
        "total_kg": total,
        "embodied_share": emb_kg / total if total > 0 else None,
    }
    samples = s.get("samples")
    if samples:
        out["per_sample_g"] = total * 1000 / samples
    if s.get("queries"):
        out["per_query_g"] = total * 1000 / s["queries"]
    return out
