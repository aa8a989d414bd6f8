"""Quantities with units, as written in carbon tables and bills of materials ("6.98 cm2", "820 g / kWh").

A small dimensional parser rather than a general units library: the tables use compact forms
(`cm2`, `g / GB`) that general registries do not know, and every error must name the entry it
came from. Dimensions: mass (carbon is counted as CO2e mass), length, energy, information.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from recstack.errors import ConfigError

# unit -> (factor to the base unit, dimension exponents (mass g, length cm, energy kWh, info GB))
_BASE: dict[str, tuple[float, tuple[int, int, int, int]]] = {}


def _add(names: str, factor: float, dims: tuple[int, int, int, int]) -> None:
    for n in names.split():
        _BASE[n] = (factor, dims)


_M, _L, _E, _I = (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)
_add("ug", 1e-6, _M)
_add("mg", 1e-3, _M)
_add("g", 1.0, _M)
_add("kg", 1e3, _M)
_add("t tonne", 1e6, _M)
_add("um", 1e-4, _L)
_add("mm", 0.1, _L)
_add("cm", 1.0, _L)
_add("m", 100.0, _L)
_add("J", 1 / 3.6e6, _E)
_add("kJ", 1 / 3.6e3, _E)
_add("MJ", 1 / 3.6, _E)
_add("GJ", 1e3 / 3.6, _E)
_add("mWh", 1e-6, _E)
_add("Wh", 1e-3, _E)
_add("kWh", 1.0, _E)
_add("MWh", 1e3, _E)
_add("GWh", 1e6, _E)
_add("B", 1e-9, _I)
_add("KB kB", 1e-6, _I)
_add("MB", 1e-3, _I)
_add("GB", 1.0, _I)
_add("TB", 1e3, _I)
_add("PB", 1e6, _I)
_add("KiB", 2**10 / 1e9, _I)
_add("MiB", 2**20 / 1e9, _I)
_add("GiB", 2**30 / 1e9, _I)
_add("TiB", 2**40 / 1e9, _I)

# dimension names used in messages
_DIM_NAMES = {
    (1, 0, 0, 0): "a mass (g, kg)",
    (0, 2, 0, 0): "an area (mm2, cm2, m2)",
    (0, 0, 1, 0): "an energy (J, MJ, Wh, kWh)",
    (0, 0, 0, 1): "a capacity (GB, TB, GiB)",
    (1, 0, -1, 0): "a carbon intensity (g / kWh)",
    (0, -2, 1, 0): "an energy per area (kWh / cm2)",
    (1, -2, 0, 0): "a mass per area (g / cm2, kg / m2)",
    (1, 0, 0, -1): "a mass per capacity (g / GB)",
    (0, 0, 0, 0): "a plain ratio (kg / kg)",
    (-1, 0, 1, 0): "an energy per mass (MJ / kg)",
}

_NUM = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*$")
_FACTOR = re.compile(r"^([A-Za-z]+)(\^?-?\d+)?$")


@dataclass(frozen=True)
class Unit:
    factor: float
    dims: tuple[int, int, int, int]

    def describe(self) -> str:
        return _DIM_NAMES.get(self.dims, f"dimension {self.dims}")


def _parse_product(text: str, where: str) -> Unit:
    factor, dims = 1.0, [0, 0, 0, 0]
    for tok in text.replace("*", " ").replace("·", " ").split():
        m = _FACTOR.match(tok)
        if m is None or m.group(1) not in _BASE:
            raise ConfigError(f"{where}: unknown unit {tok!r} (known: {', '.join(sorted(_BASE))})")
        f, d = _BASE[m.group(1)]
        exp = int(m.group(2).lstrip("^")) if m.group(2) else 1
        factor *= f**exp
        dims = [a + b * exp for a, b in zip(dims, d)]
    return Unit(factor, tuple(dims))  # type: ignore[arg-type]


def parse_unit(text: str, where: str = "unit") -> Unit:
    """`g / kWh`, `kWh / cm2`, `cm2`, `kg / kg`, or '' (dimensionless)."""
    parts = [p for p in re.split(r"\s*/\s*|\s+per\s+", text.strip())] if text.strip() else []
    if not parts:
        return Unit(1.0, (0, 0, 0, 0))
    if len(parts) > 2 or not all(parts):
        raise ConfigError(f"{where}: cannot read unit {text!r} (write e.g. 'g / kWh')")
    num = _parse_product(parts[0], where)
    if len(parts) == 1:
        return num
    den = _parse_product(parts[1], where)
    return Unit(num.factor / den.factor, tuple(a - b for a, b in zip(num.dims, den.dims)))  # type: ignore[arg-type]


def quantity(value: object, unit: str, where: str, *, allow_zero: bool = True) -> float:
    """`value` ("6.98 cm2", or a bare number when `unit` is '') converted to `unit`.

    Rejects, naming `where`: a missing or unknown unit, the wrong dimension, a negative or
    non-finite value.
    """
    want = parse_unit(unit, where)
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a quantity in {unit or 'plain numbers'}, got {value!r}")
    if isinstance(value, (int, float)):
        number, have = float(value), Unit(1.0, (0, 0, 0, 0))
        if want.dims != have.dims:
            raise ConfigError(f"{where}: {value!r} has no unit; expected {want.describe()}, e.g. '1 {unit}'")
    elif isinstance(value, str):
        m = _NUM.match(value)
        if m is None:
            raise ConfigError(f"{where}: cannot read quantity {value!r} (write e.g. '1.5 {unit}')")
        number, have = float(m.group(1)), parse_unit(m.group(2), where)
        if have.dims != want.dims:
            got = have.describe() if m.group(2) else "no unit"
            raise ConfigError(f"{where}: {value!r} is {got}; expected {want.describe()}")
    else:
        raise ConfigError(f"{where}: expected a quantity such as '1 {unit}', got {type(value).__name__}")
    if not math.isfinite(number):
        raise ConfigError(f"{where}: {value!r} is not a finite number")
    if number < 0 or (number == 0 and not allow_zero):
        raise ConfigError(f"{where}: {value!r} must be {'positive' if not allow_zero else 'non-negative'}")
    return number * have.factor / want.factor
