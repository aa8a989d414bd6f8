"""Load specs from shipped config names or YAML paths, with errors that name file and field."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from recstack.errors import ConfigError, DataError
from recstack.io import read_json
from recstack.spec.device import DeviceSpec, Topology
from recstack.spec.model import ModelSpec
from recstack.spec.train import TrainSpec

T = TypeVar("T", bound=BaseModel)

_CONFIG_ROOT = resources.files("recstack.spec") / "configs"


def _shipped(kind: str) -> dict[str, Path]:
    root = Path(str(_CONFIG_ROOT / kind))
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def list_model_configs() -> list[str]:
    """Names of the shipped model configs."""
    return list(_shipped("models"))


def list_hardware_configs() -> list[str]:
    return list(_shipped("hardware"))


def _resolve(name_or_path: str | Path, kind: str) -> Path:
    shipped = _shipped(kind)
    s = str(name_or_path)
    if s in shipped:
        return shipped[s]
    p = Path(s)
    if p.suffix in (".yaml", ".yml") or p.exists() or "/" in s:
        if not p.exists():
            raise ConfigError(f"{s}: config file not found")
        if not p.is_file():
            raise ConfigError(f"{s}: not a file")
        return p
    raise ConfigError(f"{s!r} is neither a shipped {kind} config ({', '.join(shipped)}) nor a YAML file")


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_json_model(cls: type[T], path: str | Path, what: str) -> T:
    """A pydantic model from a JSON data file; DataError naming the file (and line or field)."""
    p = Path(path)
    try:
        return validate(cls, read_json(p, what), str(p))
    except ConfigError as e:
        raise DataError(str(e)) from None


def validate(cls: type[T], data: Any, where: str) -> T:
    """pydantic validation with the first error rendered as `where: field.path: message`."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        more = f" (and {e.error_count() - 1} more errors)" if e.error_count() > 1 else ""
        raise ConfigError(f"{where}: {loc}: {msg}{more}") from None


def load_config(name_or_path: str | Path, scale: float = 1.0) -> tuple[ModelSpec, TrainSpec]:
    """A model config: ModelSpec fields at the top level plus an optional `train:` section."""
    path = _resolve(name_or_path, "models")
    data = read_yaml(path)
    train = validate(TrainSpec, data.pop("train", {}) or {}, f"{path} train")
    spec = validate(ModelSpec, data, str(path))
    return spec.scaled(scale), train


def load_model_spec(name_or_path: str | Path, scale: float = 1.0) -> ModelSpec:
    return load_config(name_or_path, scale)[0]


def load_device(name_or_path: str | Path) -> DeviceSpec:
    path = _resolve(name_or_path, "hardware")
    data = read_yaml(path)
    return validate(DeviceSpec, data.get("device", data), str(path))


def load_topology(name_or_path: str | Path) -> Topology:
    path = _resolve(name_or_path, "hardware")
    data = read_yaml(path)
    if "topology" not in data:
        raise ConfigError(f"{path}: no `topology` section")
    topo = dict(data["topology"])
    topo.setdefault("device", data.get("device"))
    return validate(Topology, topo, f"{path} topology")


def dump_yaml(obj: BaseModel) -> str:
    return yaml.safe_dump(obj.model_dump(exclude_defaults=False), sort_keys=False)
