"""`TargetSpec`: everything compress-ir needs to know about one compilation target.

A spec is plain data (JSON-able dicts), so the registry, the report and the
artifact metadata can hold it without importing TVM; `tvm_target()` makes the
TVM object only when a build needs it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal

Family = Literal["arm", "x86", "cuda"]
Device = Literal["cpu", "cuda"]


@dataclass(frozen=True)
class TargetSpec:
    """One target: TVM target dict plus what building and pruning for it need.

    `lanes` is the fp32 vector width the code is generated for (4 NEON, 8 AVX2, 16
    AVX-512; 0 for cuda): the CPU schedules tile by it, and it is the one value for
    it (worked out once, in the registry). `round_to` is the channel multiple that
    keeps those lanes full; channel-prune uses it as its default.
    `required_cpu_flags` are /proc/cpuinfo flags a host needs to run the code.
    """

    name: str
    family: Family
    tvm: dict[str, Any]
    round_to: int
    device: Device
    description: str
    host: dict[str, Any] | None = None
    cross_compiler: str | None = None
    required_cpu_flags: tuple[str, ...] = ()
    expert: bool = field(default=False, compare=False)
    lanes: int = 0

    def __post_init__(self) -> None:
        if self.device == "cpu" and self.lanes < 1:
            raise ValueError(f"target {self.name}: a CPU target needs its vector lanes")

    @property
    def vector_registers(self) -> int:
        """Vector registers the micro-kernels may fill: 32 on aarch64 and AVX-512, else 16."""
        if self.device != "cpu":
            return 0
        return 32 if self.family == "arm" or self.lanes >= 16 else 16

    @property
    def slug(self) -> str:
        """The name usable in a file name (`arm:rpi4` -> `arm-rpi4`)."""
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name)

    @property
    def cuda_arch(self) -> str | None:
        """`sm_XX` of a cuda target, else None."""
        return str(self.tvm.get("arch", "sm_80")) if self.family == "cuda" else None

    def tvm_target(self) -> Any:
        """The `tvm.target.Target` (with host for cuda); imports tvm."""
        import tvm

        host = None if self.host is None else tvm.target.Target(copy.deepcopy(self.host))
        return tvm.target.Target(copy.deepcopy(self.tvm), host=host)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for reports and artifact metadata."""
        return {
            "name": self.name,
            "family": self.family,
            "device": self.device,
            "tvm_target": copy.deepcopy(self.tvm),
            "host": copy.deepcopy(self.host),
            "cross_compiler": self.cross_compiler,
            "round_to": self.round_to,
            "lanes": self.lanes,
            "description": self.description,
        }
