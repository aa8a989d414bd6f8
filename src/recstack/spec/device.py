"""Hardware specs: what a device and a cluster are, for the performance model, sharding and carbon."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from recstack.spec.bom import EmbodiedSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DeviceSpec(_Strict):
    """One compute device. Bandwidths in bytes/s, FLOP/s per precision, power in watts.

    A `local` device is the machine recstack runs on; its measured figures replace the
    nominal ones when the performance model calibrates.
    """

    name: str
    kind: Literal["cpu", "gpu"]
    memory_bytes: int = Field(gt=0)
    memory_bw: float = Field(gt=0, description="peak memory bandwidth, bytes/s")
    peak_flops: dict[str, float] = Field(description="peak FLOP/s by dtype, e.g. fp32, bf16")
    caches: dict[str, int] = Field(default_factory=dict, description="cache level -> bytes")
    cores: int | None = Field(default=None, gt=0)
    tdp_w: float = Field(gt=0)
    idle_w: float = Field(ge=0)
    embodied: EmbodiedSpec | None = Field(default=None, description="bill of materials for embodied carbon")
    source: str = ""


class Topology(_Strict):
    """Devices of one kind arranged in hosts."""

    name: str
    device: DeviceSpec
    devices_per_host: int = Field(default=1, gt=0)
    hosts: int = Field(default=1, gt=0)
    intra_host_bw: float = Field(gt=0, description="per-device bytes/s within a host")
    inter_host_bw: float = Field(gt=0, description="per-device bytes/s across hosts")

    @property
    def world_size(self) -> int:
        return self.devices_per_host * self.hosts
