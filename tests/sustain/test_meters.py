"""Energy meters: the CPU estimate against its formula, RAPL on a fake powercap tree, NVML faked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from recstack.errors import ConfigError
from recstack.spec import load_device
from recstack.sustain.meters import (
    ComponentEnergy,
    EnergyMeter,
    EnergyReport,
    detect_hardware,
    estimate_cpu_joules,
    hardware_for_gpu,
    usable_cores,
)

NO_RAPL = "/nonexistent/powercap"


def busy(seconds: float) -> None:
    t = time.perf_counter()
    while time.perf_counter() - t < seconds:
        pass


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---------------------------------------------------------------- fakes
def rapl_tree(root: Path, packages: dict[int, int], dram: dict[int, int] | None = None,
              max_range: int = 1_000_000_000) -> Path:
    """A powercap tree: intel-rapl:N packages (energy_uj), optional dram subdomains, and a psys domain."""
    def domain(path: Path, name: str, uj: int) -> None:
        path.mkdir(parents=True)
        (path / "name").write_text(name + "\n")
        (path / "energy_uj").write_text(f"{uj}\n")
        (path / "max_energy_range_uj").write_text(f"{max_range}\n")

    for n, uj in packages.items():
        domain(root / f"intel-rapl:{n}", f"package-{n}", uj)
        domain(root / f"intel-rapl:{n}" / f"intel-rapl:{n}:0", "core", 0)
    for n, uj in (dram or {}).items():
        domain(root / f"intel-rapl:{n}" / f"intel-rapl:{n}:1", "dram", uj)
    domain(root / f"intel-rapl:{len(packages)}", "psys", 0)  # whole platform: must not be added
    return root


def set_uj(root: Path, domain: str, uj: int) -> None:
    parts = domain.split("/")
    (root.joinpath(*parts) / "energy_uj").write_text(f"{uj}\n")


class FakeNvml(types.SimpleNamespace):
    """pynvml's functions used by the meter; energy counters in mJ, set by the test."""

    class NVMLError(Exception):
        pass

    def __init__(self, names: list[str], mj: list[int], driver: bool = True, counter: bool = True) -> None:
        super().__init__(names=names, mj=list(mj), driver=driver, counter=counter, inits=0)

    def nvmlInit(self) -> None:
        if not self.driver:
            raise self.NVMLError("Driver Not Loaded")
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.inits -= 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        return int(uuid.removeprefix("GPU-"))

    def nvmlDeviceGetName(self, h: int) -> str:
        return self.names[h]

    def nvmlDeviceGetTotalEnergyConsumption(self, h: int) -> int:
        if not self.counter:
            raise self.NVMLError("Not Supported")
        return self.mj[h]


# ---------------------------------------------------------------- estimate
def test_estimate_formula():
    assert estimate_cpu_joules(10.0, 0.0, 2, 30.0, 10.0) == pytest.approx(100.0)  # idle only
    assert estimate_cpu_joules(10.0, 10.0, 2, 30.0, 10.0) == pytest.approx(200.0)  # one of two cores busy
    assert estimate_cpu_joules(10.0, 50.0, 2, 30.0, 10.0) == pytest.approx(300.0)  # capped at TDP
    assert estimate_cpu_joules(0.0, 1.0, 2, 30.0, 10.0) == 0.0


def test_estimate_of_a_busy_loop_follows_the_formula(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = load_device("cpu-2core")
    m = EnergyMeter("cpu-2core", gpus=False, powercap_root=NO_RAPL)
    c0, t0 = cpu_seconds(), time.perf_counter()
    m.start()
    busy(0.3)
    r = m.stop()
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    cores = usable_cores()
    scale = cores / spec.cores
    tdp, idle = spec.tdp_w * scale, spec.idle_w * scale
    (c,) = r.components
    assert c.name == "cpu" and c.method == "estimated" and r.method == "estimated"
    assert "estimate:" in c.source and "cpu-2core" in c.source and f"tdp {spec.tdp_w:g} W" in c.source
    assert idle * r.seconds <= c.joules <= tdp * r.seconds + 1e-9
    assert c.joules > idle * r.seconds  # the loop kept a core busy
    expect = estimate_cpu_joules(wall, cpu, cores, tdp, idle)
    assert c.joules == pytest.approx(expect, rel=0.05, abs=0.3)  # os.times ticks are 10 ms
    assert any("RAPL" in n and "not present" in n for n in r.notes)
    assert r.hardware == "cpu-2core" and r.total_j == c.joules


def test_estimate_counts_waited_for_children():
    # the child burns 0.3 s of CPU time (not wall time: on a loaded machine that is less CPU)
    code = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    with EnergyMeter("cpu-2core", gpus=False, powercap_root=NO_RAPL) as m:
        subprocess.run([sys.executable, "-c", code], check=True)
    cpu_s = float(re.search(r"cpu_s ([0-9.]+) s", m.report.components[0].source).group(1))
    assert cpu_s >= 0.25  # the child's busy loop, not only this process's waiting


def test_estimate_scales_to_usable_cores(monkeypatch):
    from recstack.sustain import meters

    monkeypatch.setattr(meters, "usable_cores", lambda: 8)
    with EnergyMeter("cpu-2core", gpus=False, powercap_root=NO_RAPL) as m:
        pass
    (c,) = m.report.components
    assert "scaled to 8 local cores" in c.source and "tdp 120 W, idle 40 W" in c.source
    assert c.joules >= 40.0 * m.report.seconds


def test_gpu_config_estimates_the_host_cpu_with_the_cpu_config():
    with EnergyMeter("h100", gpus=False, powercap_root=NO_RAPL) as m:
        pass
    (c,) = m.report.components
    assert m.report.hardware == "h100" and "cpu-2core" in c.source and "h100 is a GPU config" in c.source


# ---------------------------------------------------------------- RAPL
def test_rapl_packages_and_dram_measured(tmp_path):
    root = rapl_tree(tmp_path / "powercap", {0: 1_000_000, 1: 5_000_000}, dram={0: 0})
    m = EnergyMeter("cpu-2core", gpus=False, powercap_root=root)
    m.start()
    set_uj(root, "intel-rapl:0", 3_500_000)
    set_uj(root, "intel-rapl:1", 6_000_000)
    set_uj(root, "intel-rapl:0/intel-rapl:0:1", 250_000)
    r = m.stop()
    comps = {c.name: c for c in r.components}
    assert set(comps) == {"cpu", "dram"} and r.method == "measured" and not r.notes
    assert comps["cpu"].joules == pytest.approx(3.5)  # 2.5 J + 1.0 J; psys not added
    assert comps["dram"].joules == pytest.approx(0.25)
    assert "RAPL intel-rapl:0 (package-0), intel-rapl:1 (package-1)" in comps["cpu"].source
    assert "psys" not in comps["cpu"].source


def test_rapl_wrap_around(tmp_path):
    root = rapl_tree(tmp_path / "powercap", {0: 900}, max_range=1000)
    m = EnergyMeter("cpu-2core", gpus=False, powercap_root=root, poll_s=3600)
    m.start()
    set_uj(root, "intel-rapl:0", 100)  # wrapped: 100 + 1000 - 900 = 200 uJ
    m.sample()
    set_uj(root, "intel-rapl:0", 50)  # wrapped again between samples: 950 uJ
    r = m.stop()
    assert r.components[0].joules == pytest.approx(1150e-6)


def test_rapl_unreadable_falls_back_to_the_estimate(tmp_path, monkeypatch):
    root = rapl_tree(tmp_path / "powercap", {0: 0})
    locked = root / "intel-rapl:0" / "energy_uj"  # root-only (0400) on Linux >= 5.10; tests may run as root
    read = Path.read_text

    def read_text(self: Path, *a, **k) -> str:
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return read(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", read_text)
    with EnergyMeter("cpu-2core", gpus=False, powercap_root=root) as m:
        pass
    r = m.report
    assert [c.method for c in r.components] == ["estimated"] and r.method == "estimated"
    (note,) = r.notes
    assert note.startswith("RAPL:") and "permission denied" in note and "energy_uj" in note


def test_rapl_failing_during_the_run_falls_back(tmp_path):
    root = rapl_tree(tmp_path / "powercap", {0: 0})
    m = EnergyMeter("cpu-2core", gpus=False, powercap_root=root)
    m.start()
    (root / "intel-rapl:0" / "energy_uj").write_text("garbage\n")
    r = m.stop()
    assert r.components[0].method == "estimated" and "reading failed during the run" in r.notes[0]


def test_rapl_without_package_domains(tmp_path):
    (tmp_path / "powercap").mkdir()
    with EnergyMeter("cpu-2core", gpus=False, powercap_root=tmp_path / "powercap") as m:
        pass
    assert "no package domains" in m.report.notes[0]


# ---------------------------------------------------------------- NVML
def test_nvml_gpus_measured(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nv = FakeNvml(["NVIDIA H100 80GB HBM3", "NVIDIA H100 80GB HBM3"], [10_000, 20_000])
    m = EnergyMeter("h100", powercap_root=NO_RAPL, nvml=nv)
    m.start()
    nv.mj = [12_500, 20_100]
    r = m.stop()
    comps = {c.name: c for c in r.components}
    assert comps["gpu0"].joules == pytest.approx(2.5) and comps["gpu1"].joules == pytest.approx(0.1)
    assert comps["gpu0"].method == "measured"
    assert "NVML total energy counter (NVIDIA H100" in comps["gpu0"].source
    assert comps["cpu"].method == "estimated" and r.method == "mixed"
    assert r.total_j == pytest.approx(2.6 + comps["cpu"].joules)
    assert nv.inits == 0  # shut down again


def test_nvml_chosen_and_visible_gpus(monkeypatch):
    nv = FakeNvml(["A", "B", "C"], [0, 0, 0])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-0")
    m = EnergyMeter("cpu-2core", gpus=[1, 5], powercap_root=NO_RAPL, nvml=nv)
    m.start()
    nv.mj = [7_000, 0, 3_000]
    r = m.stop()
    comps = {c.name: c for c in r.components}
    assert set(comps) == {"cpu", "gpu1"} and comps["gpu1"].joules == pytest.approx(7.0)  # ordinal 1 = GPU-0
    assert "(A)" in comps["gpu1"].source and any("GPU 5 not visible" in n for n in r.notes)


def test_nvml_absent_or_unsupported_is_a_note_not_an_error(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with EnergyMeter("cpu-2core", powercap_root=NO_RAPL, nvml=FakeNvml([], [], driver=False)) as m:
        pass
    assert [c.name for c in m.report.components] == ["cpu"]
    assert any(n.startswith("NVML:") and "Driver Not Loaded" in n for n in m.report.notes)
    nv = FakeNvml(["NVIDIA A100-SXM4-80GB"], [0], counter=False)
    with EnergyMeter("a100", powercap_root=NO_RAPL, nvml=nv) as m:
        pass
    assert [c.name for c in m.report.components] == ["cpu"]
    assert "no total energy counter" in m.report.notes[-1]
    assert nv.inits == 0


def test_detect_hardware(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert hardware_for_gpu("NVIDIA H200") == "h200" and hardware_for_gpu("NVIDIA H100 PCIe") == "h100"
    assert hardware_for_gpu("NVIDIA A100-SXM4-40GB") == "a100" and hardware_for_gpu("Tesla T4") == "cpu-2core"
    assert hardware_for_gpu(None) == "cpu-2core"
    assert detect_hardware(FakeNvml(["NVIDIA H200"], [0])) == "h200"
    import torch

    if not torch.cuda.is_available():
        assert detect_hardware(FakeNvml([], [], driver=False)) == "cpu-2core"


# ---------------------------------------------------------------- report and misuse
def test_report_labels_and_dict():
    est = ComponentEnergy("cpu", 30.0, "estimated", "estimate: ...")
    meas = ComponentEnergy("gpu0", 3.6e6, "measured", "NVML ...")
    assert EnergyReport(1.0, (est,), "cpu-2core").method == "estimated"
    assert EnergyReport(1.0, (meas,), "h100").method == "measured"
    r = EnergyReport(2.0, (est, meas), "h100", ("RAPL: absent",))
    assert r.method == "mixed" and r.total_kwh == pytest.approx(1 + 30 / 3.6e6)
    d = r.to_dict()
    assert d["method"] == "mixed" and d["notes"] == ["RAPL: absent"] and d["seconds"] == 2.0
    gpu = {"joules": 3.6e6, "kwh": 1.0, "method": "measured", "source": "NVML ..."}
    assert d["components"]["gpu0"] == gpu
    import json

    json.dumps(d)


def test_unknown_hardware_names_the_shipped_configs():
    with pytest.raises(ConfigError, match=r"'tpu-v9'.*cpu-2core.*h100"):
        EnergyMeter("tpu-v9", gpus=False)


def test_stop_before_start_and_twice():
    m = EnergyMeter("cpu-2core", gpus=False, powercap_root=NO_RAPL)
    with pytest.raises(RuntimeError, match="not started"):
        m.stop()
    m.start()
    with pytest.raises(RuntimeError, match="already started"):
        m.start()
    m.stop()
    with pytest.raises(RuntimeError, match="already stopped"):
        m.stop()
