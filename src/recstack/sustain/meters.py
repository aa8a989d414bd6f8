"""Energy meters: what a run drew, measured where the machine allows it and labelled estimates elsewhere.

CPU packages and DRAM are measured with RAPL (Linux powercap sysfs, Intel and AMD); NVIDIA GPUs with
NVML's total-energy counter. RAPL is often absent or unreadable (VMs; `energy_uj` is root-only since
Linux 5.10), so the CPU then falls back to an estimate from this process tree's CPU time and the
hardware config's TDP and idle power. Each component says which it is, and how, in its `source`;
an estimate is never labelled measured. Both counters are machine-wide: they include other processes.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from recstack.machine import usable_cores  # cores this process may run on
from recstack.spec import DeviceSpec, load_device

J_PER_KWH = 3.6e6
HOST_CPU = "cpu-2core"  # the shipped CPU config; stands in for the host CPU of a GPU config
_GPU_CONFIGS = (("H200", "h200"), ("H100", "h100"), ("A100", "a100"))
_FORMULA = "idle_w*wall + (tdp_w-idle_w)*min(1, cpu_s/(wall*cores))*wall"


@dataclass(frozen=True)
class ComponentEnergy:
    """Energy of one component over the metered interval."""

    name: str  # "cpu" (all packages), "dram", "gpu0", ...
    joules: float
    method: str  # "measured" or "estimated"
    source: str  # how, in words: counter and domains, or the estimate's formula and figures


@dataclass(frozen=True)
class EnergyReport:
    """What an EnergyMeter saw between start() and stop()."""

    seconds: float
    components: tuple[ComponentEnergy, ...]
    hardware: str
    notes: tuple[str, ...] = ()  # why a measured source was not used

    @property
    def total_j(self) -> float:
        return sum(c.joules for c in self.components)

    @property
    def total_kwh(self) -> float:
        return self.total_j / J_PER_KWH

    @property
    def method(self) -> str:
        """measured or estimated when every component is, else mixed (none: no components)."""
        methods = {c.method for c in self.components}
        return methods.pop() if len(methods) == 1 else ("mixed" if methods else "none")

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds, "total_j": self.total_j, "total_kwh": self.total_kwh,
            "method": self.method, "hardware": self.hardware, "notes": list(self.notes),
            "components": {c.name: {"joules": c.joules, "kwh": c.joules / J_PER_KWH, "method": c.method,
                                    "source": c.source} for c in self.components},
        }


def estimate_cpu_joules(wall_s: float, cpu_s: float, cores: int, tdp_w: float, idle_w: float) -> float:
    """Idle power for the whole interval plus the dynamic range in proportion to core utilisation."""
    if wall_s <= 0:
        return 0.0
    busy = min(1.0, max(0.0, cpu_s) / (wall_s * cores))
    return idle_w * wall_s + (tdp_w - idle_w) * busy * wall_s


def hardware_for_gpu(gpu_name: str | None) -> str:
    """The shipped hardware config for a GPU name ("NVIDIA H100 80GB HBM3" -> "h100"); else the CPU one."""
    for key, config in _GPU_CONFIGS:
        if gpu_name and key in gpu_name.upper():
            return config
    return HOST_CPU


def detect_hardware(nvml: Any = None) -> str:
    """The shipped hardware config matching this machine, from the first visible GPU's name.

    NVML is asked first because it does not create a CUDA context; torch is the fallback.
    """
    try:
        nv = nvml if nvml is not None else _import_nvml()
    except ImportError:
        nv = None
    if nv is not None:
        error = getattr(nv, "NVMLError", Exception)
        try:
            nv.nvmlInit()
        except error:
            nv = None
    if nv is not None:
        try:
            handles, _ = _visible_handles(nv, os.environ.get("CUDA_VISIBLE_DEVICES"))
            return hardware_for_gpu(_text(nv.nvmlDeviceGetName(handles[0])) if handles else None)
        except error:
            pass
        finally:
            nv.nvmlShutdown()
    import torch

    return hardware_for_gpu(torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)


# ---------------------------------------------------------------- RAPL
class Unusable(Exception):
    """A measured source cannot be used here; the message says why (it becomes a report note)."""


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except PermissionError:
        raise Unusable(f"{path}: permission denied (root only on Linux >= 5.10 and in most VMs)") from None
    except OSError as e:
        raise Unusable(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError:
        raise Unusable(f"{path}: not an integer") from None


@dataclass
class _Domain:
    component: str  # "cpu" or "dram"
    path: Path
    label: str  # "intel-rapl:0 (package-0)"
    max_range: int
    last: int = 0
    joules: float = 0.0


class Rapl:
    """RAPL package and DRAM counters under a powercap root, summed per component.

    Counters are read on every sample() and the deltas accumulated, so wrap-around at
    max_energy_range_uj is undone as long as a counter wraps at most once between samples.
    """

    def __init__(self, root: str | Path) -> None:
        root = Path(root)
        if not root.is_dir():
            raise Unusable(f"{root} not present")
        self.domains: list[_Domain] = []
        try:
            packages = sorted((p for p in root.iterdir() if re.fullmatch(r"intel-rapl:\d+", p.name)),
                              key=lambda p: int(p.name.split(":")[1]))
        except OSError as e:
            raise Unusable(f"{root}: cannot list ({e.strerror or e})") from None
        for pkg in packages:
            name = _read_name(pkg)
            if not name.startswith("package"):
                continue  # psys (whole platform) would count the packages twice
            self.domains.append(self._domain("cpu", pkg, name))
            for sub in sorted(pkg.glob(f"{pkg.name}:*")):
                if _read_name(sub) == "dram":
                    self.domains.append(self._domain("dram", sub, "dram"))
        if not any(d.component == "cpu" for d in self.domains):
            raise Unusable(f"no package domains (intel-rapl:N) under {root}")
        self._lock = threading.Lock()

    @staticmethod
    def _domain(component: str, path: Path, name: str) -> _Domain:
        d = _Domain(component, path, f"{path.name} ({name})", _read_int(path / "max_energy_range_uj"))
        d.last = _read_int(path / "energy_uj")
        return d

    def sample(self) -> None:
        with self._lock:
            for d in self.domains:
                now = _read_int(d.path / "energy_uj")
                delta = now - d.last if now >= d.last else now + d.max_range - d.last
                d.joules += delta / 1e6
                d.last = now

    def components(self) -> list[ComponentEnergy]:
        out = []
        for comp in ("cpu", "dram"):
            ds = [d for d in self.domains if d.component == comp]
            if ds:
                how = f"RAPL {', '.join(d.label for d in ds)}; whole package, all processes"
                out.append(ComponentEnergy(comp, sum(d.joules for d in ds), "measured", how))
        return out


def _read_name(path: Path) -> str:
    try:
        return (path / "name").read_text().strip()
    except OSError:
        return ""


# ---------------------------------------------------------------- NVML
def _import_nvml() -> Any:
    import pynvml

    return pynvml


def _text(s: str | bytes) -> str:
    return s.decode() if isinstance(s, bytes) else s


def _visible_handles(nv: Any, visible: str | None) -> tuple[list[Any], list[str]]:
    """NVML handles in CUDA ordinal order, following CUDA_VISIBLE_DEVICES (indices or GPU- UUIDs).

    Without that variable CUDA ordinals are taken to follow NVML's (PCI bus) order, which holds
    on machines of one GPU model.
    """
    count = nv.nvmlDeviceGetCount()
    if visible is None:
        return [nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)], []
    handles, notes = [], []
    for tok in (t.strip() for t in visible.split(",") if t.strip()):
        if tok.isdigit() and int(tok) < count:
            handles.append(nv.nvmlDeviceGetHandleByIndex(int(tok)))
        elif tok.startswith("GPU-"):
            handles.append(nv.nvmlDeviceGetHandleByUUID(tok))
        else:  # CUDA too stops at the first entry it cannot use; MIG instances have no energy counter
            notes.append(f"NVML: CUDA_VISIBLE_DEVICES entry {tok!r} not metered (nor any after it)")
            break
    return handles, notes


class _Gpus:
    """NVML total-energy counters (millijoules since driver load, 64-bit: no wrap) of chosen GPUs."""

    def __init__(self, nv: Any, which: Sequence[int] | None, notes: list[str]) -> None:
        self.nv = nv
        self.error = getattr(nv, "NVMLError", Exception)
        try:
            nv.nvmlInit()
        except self.error as e:
            raise Unusable(f"no NVIDIA driver or NVML library ({e})") from None
        self.start: dict[int, tuple[Any, str, int]] = {}
        try:
            handles, more = _visible_handles(nv, os.environ.get("CUDA_VISIBLE_DEVICES"))
            notes += more
            for i in range(len(handles)) if which is None else which:
                if not 0 <= i < len(handles):
                    notes.append(f"NVML: GPU {i} not visible ({len(handles)} visible); not metered")
                    continue
                name = _text(nv.nvmlDeviceGetName(handles[i]))
                try:
                    self.start[i] = (handles[i], name, nv.nvmlDeviceGetTotalEnergyConsumption(handles[i]))
                except self.error as e:
                    notes.append(f"NVML: gpu{i} ({name}): no total energy counter ({e}); not metered")
        except self.error as e:
            nv.nvmlShutdown()
            raise Unusable(str(e)) from None

    def stop(self, notes: list[str]) -> list[ComponentEnergy]:
        out = []
        try:
            for i, (handle, name, mj0) in sorted(self.start.items()):
                try:
                    mj = self.nv.nvmlDeviceGetTotalEnergyConsumption(handle)
                except self.error as e:
                    notes.append(f"NVML: gpu{i} ({name}): reading failed at stop ({e}); not metered")
                    continue
                how = f"NVML total energy counter ({name}); whole device, all processes"
                out.append(ComponentEnergy(f"gpu{i}", (mj - mj0) / 1e3, "measured", how))
        finally:
            self.nv.nvmlShutdown()
        return out


# ---------------------------------------------------------------- the meter
class EnergyMeter:
    """Meters an interval: `with EnergyMeter() as m: ...` then `m.report` (or start() / stop()).

    hardware: shipped hardware config (or YAML) of this machine, detected when None; a CPU config
    gives the CPU estimate its TDP and idle power (a GPU config uses the shipped CPU config).
    gpus: meter all visible GPUs (True), none (False) or these CUDA ordinals.
    poll_s: seconds between RAPL reads in a background thread, so that no counter wraps twice.
    CPU time is this process's plus that of children it has waited for (spawned workers once joined).
    """

    def __init__(self, hardware: str | None = None, *, gpus: bool | Sequence[int] = True,
                 powercap_root: str | Path = "/sys/class/powercap", nvml: Any = None,
                 poll_s: float = 10.0) -> None:
        self.hardware = hardware if hardware is not None else detect_hardware(nvml)
        spec = load_device(self.hardware)  # ConfigError naming the shipped configs
        self._cpu: tuple[str, DeviceSpec] = (self.hardware, spec) if spec.kind == "cpu" else (
            HOST_CPU, load_device(HOST_CPU))
        self._gpus = gpus
        self._root = powercap_root
        self._nvml = nvml
        self._poll_s = poll_s
        self._state = "new"
        self._notes: list[str] = []
        self._rapl: Rapl | None = None
        self._rapl_error: str | None = None
        self._gpu: _Gpus | None = None
        self._stop_poll = threading.Event()
        self._poller: threading.Thread | None = None
        self.report: EnergyReport | None = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("EnergyMeter.start(): already started (use a new meter per interval)")
        self._state = "running"
        try:
            self._rapl = Rapl(self._root)
        except Unusable as e:
            self._notes.append(f"RAPL: {e}; CPU energy estimated")
        if self._gpus is not False:
            try:
                nv = self._nvml if self._nvml is not None else _import_nvml()
                self._gpu = _Gpus(nv, None if self._gpus is True else list(self._gpus), self._notes)
            except ImportError:
                self._notes.append("NVML: pynvml (nvidia-ml-py) not installed; GPU energy not metered")
            except Unusable as e:
                self._notes.append(f"NVML: {e}; GPU energy not metered")
        if self._rapl is not None:
            self._poller = threading.Thread(target=self._poll, name="rapl-poll", daemon=True)
            self._poller.start()
        self._times0 = os.times()
        self._t0 = time.perf_counter()

    def sample(self) -> None:
        """Read the RAPL counters now (the poll thread does this every poll_s seconds)."""
        if self._rapl is not None and self._rapl_error is None:
            try:
                self._rapl.sample()
            except Unusable as e:
                self._rapl_error = str(e)

    def _poll(self) -> None:
        while not self._stop_poll.wait(self._poll_s):
            self.sample()

    def stop(self) -> EnergyReport:
        if self._state != "running":
            why = "not started" if self._state == "new" else "already stopped"
            raise RuntimeError(f"EnergyMeter.stop(): {why}")
        wall = time.perf_counter() - self._t0
        t1, t0 = os.times(), self._times0
        fields = ("user", "system", "children_user", "children_system")
        cpu_s = sum(getattr(t1, f) - getattr(t0, f) for f in fields)
        self._state = "stopped"
        self._stop_poll.set()
        if self._poller is not None:
            self._poller.join()
        self.sample()
        components: list[ComponentEnergy] = []
        if self._rapl is not None and self._rapl_error is None:
            components += self._rapl.components()
        else:
            if self._rapl_error is not None:
                self._notes.append(
                    f"RAPL: reading failed during the run ({self._rapl_error}); CPU energy estimated")
            components.append(self._estimate(wall, cpu_s))
        if self._gpu is not None:
            components += self._gpu.stop(self._notes)
        self.report = EnergyReport(wall, tuple(components), self.hardware, tuple(self._notes))
        return self.report

    def _estimate(self, wall: float, cpu_s: float) -> ComponentEnergy:
        name, spec = self._cpu
        cores = usable_cores()
        tdp, idle = spec.tdp_w, spec.idle_w
        how = f"device {name} (tdp {tdp:g} W, idle {idle:g} W"
        if name != self.hardware:
            how += f"; host CPU stand-in, {self.hardware} is a GPU config"
        if spec.cores is None:
            how += "; config gives no core count, not scaled)"
        elif spec.cores != cores:
            tdp, idle = tdp * cores / spec.cores, idle * cores / spec.cores
            how += f" for {spec.cores} cores) scaled to {cores} local cores: tdp {tdp:g} W, idle {idle:g} W"
        else:
            how += ")"
        j = estimate_cpu_joules(wall, cpu_s, cores, tdp, idle)
        return ComponentEnergy("cpu", j, "estimated",
                               f"estimate: {_FORMULA} with wall {wall:.3f} s, cpu_s {cpu_s:.3f} s "
                               f"(this process and waited-for children), cores {cores}, {how}")
