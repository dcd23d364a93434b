"""Run and time artifacts: locally with the TVM runtime, or on a device through TVM RPC.

`--rpc host:port` talks to an RPC server (`python -m tvm.exec.rpc_server`),
`host:port:key` asks a tracker for a device registered under `key`. The
library is uploaded, loaded remotely and driven by a Relax VM there.
"""

from __future__ import annotations

import gc
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress_ir.backend.artifact import Artifact, artifact_inputs, check_inputs, load_artifact
from compress_ir.core.errors import UsageError
from compress_ir.targets import host


@dataclass(frozen=True)
class RpcAddress:
    host: str
    port: int
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" + (f":{self.key}" if self.key else "")


def parse_rpc(text: str) -> RpcAddress:
    """`host:port` (an RPC server) or `host:port:key` (a tracker and device key)."""
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise UsageError(f"--rpc {text!r}: expected host:port or host:port:key")
    try:
        port = int(parts[1])
    except ValueError:
        raise UsageError(f"--rpc {text!r}: port {parts[1]!r} is not a number") from None
    if len(parts) == 3 and not parts[2]:
        raise UsageError(f"--rpc {text!r}: empty tracker key")
    return RpcAddress(parts[0], port, parts[2] if len(parts) == 3 else None)


def local_run_blocker(art_meta: dict[str, Any]) -> str | None:
    """Why this host cannot run the artifact itself (None when it can)."""
    spec = art_meta.get("target_spec", {})
    family = spec.get("family")
    if art_meta.get("device") == "cuda":
        import tvm

        if not tvm.cuda(0).exist:
            return "no CUDA GPU on this machine"
        return None
    if family == "arm" or str(art_meta.get("tvm_target", {}).get("mtriple", "")).startswith(
            "aarch64"):
        return "aarch64 code cannot run on this x86 host (use --rpc or tools/arm)"
    if not host.is_x86_64():
        return f"x86 code cannot run on this {platform.machine()} host"
    missing = [f for f in spec.get("required_cpu_flags", []) if f not in host.cpu_flags()]
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    return None


class Session:
    """A loaded artifact: VM + device, local or behind an RPC session."""

    def __init__(self, art: Artifact, rpc: str | None = None) -> None:
        import tvm
        from tvm import relax

        self.art = art
        self.where = "local"
        self._remote = None
        if rpc:
            addr = parse_rpc(rpc)
            self._remote = _connect(addr)
            self.where = f"rpc {addr}"
            name = f"{art.meta.get('model_sha256', 'model')[:16]}-{art.library.name}"
            self._remote.upload(str(art.library), target=name)
            lib = self._remote.load_module(name)
            self.device = self._remote.cuda(0) if art.device == "cuda" else self._remote.cpu(0)
        else:
            blocker = local_run_blocker(art.meta)
            if blocker:
                raise UsageError(f"artifact {art.path} ({art.target}) cannot run here: "
                                 f"{blocker}")
            lib = tvm.runtime.load_module(str(art.library))
            self.device = tvm.cuda(0) if art.device == "cuda" else tvm.cpu(0)
        self.vm = relax.VirtualMachine(lib, self.device)

    def close(self) -> None:
        """Drop the VM and the RPC session (a server serves one session at a time)."""
        self.vm = None
        self._remote = None
        gc.collect()  # the session ends when its last reference goes

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tensors(self, inputs: dict[str, np.ndarray]) -> list[Any]:
        import tvm

        return [tvm.runtime.tensor(a, device=self.device) for a in
                check_inputs(self.art.inputs, inputs)]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # set_input/invoke_stateful/get_outputs also fetch tuples through RPC
        self.vm.set_input("main", *self.tensors(inputs))
        self.vm.invoke_stateful("main")
        result = self.vm.get_outputs("main")
        values = list(result) if isinstance(result, tuple) else [result]
        names = [o.name for o in self.art.outputs]
        if len(values) != len(names):
            raise UsageError(f"artifact {self.art.path}: module returned {len(values)} outputs,"
                             f" meta.json lists {len(names)}")
        return {n: v.numpy() for n, v in zip(names, values, strict=True)}

    def timer(self, inputs: dict[str, np.ndarray], number: int = 1) -> Any:
        """A callable timing `number` VM calls on the device per call (ms per call).

        For interleaved benchmarks: one sample per call, timed by TVM on the device.
        """
        args = self.tensors(inputs)
        self.vm["main"](*args)  # warm-up (first call allocates)
        evaluator = self.vm.time_evaluator("main", self.device, number=number, repeat=1)
        return lambda: float(evaluator(*args).results[0]) * 1e3

    def time(self, inputs: dict[str, np.ndarray], repeat: int, number: int = 1
             ) -> dict[str, Any]:
        """VM `time_evaluator` on the device: `repeat` samples of `number` calls each."""
        args = self.tensors(inputs)
        self.vm["main"](*args)  # warm-up (first call allocates)
        evaluator = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        samples = [float(s) * 1e3 for s in evaluator(*args).results]
        return {"median_ms": statistics.median(samples), "min_ms": min(samples),
                "repeat": repeat, "number": number, "method": "vm.time_evaluator",
                "where": self.where}


def _connect(addr: RpcAddress) -> Any:
    from tvm import rpc

    try:
        if addr.key:
            return rpc.connect_tracker(addr.host, addr.port).request(addr.key, session_timeout=0)
        return rpc.connect(addr.host, addr.port)
    except Exception as exc:  # noqa: BLE001 - socket errors arrive as TVMError/RuntimeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot reach RPC {addr}: {first}") from None


def _as_artifact(artifact: str | Artifact) -> Artifact:
    return artifact if isinstance(artifact, Artifact) else load_artifact(artifact)


def run_artifact(artifact: str | Artifact, inputs: dict[str, np.ndarray] | None = None,
                 rpc: str | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Outputs by name; seeded random inputs (meta.json shapes) when `inputs` is None."""
    art = _as_artifact(artifact)
    feeds = artifact_inputs(art.inputs, seed) if inputs is None else inputs
    with Session(art, rpc) as session:
        return session.run(feeds)


def time_artifact(artifact: str | Artifact, inputs: dict[str, np.ndarray] | None = None,
                  rpc: str | None = None, repeat: int = 10, number: int = 1, seed: int = 0
                  ) -> dict[str, Any]:
    """Median/min latency in ms over `repeat` samples, timed on the device by TVM.

    `vm.time_evaluator` times only the VM call (inputs already on the device), on
    the remote side for RPC, so network transfer is not counted.
    """
    if repeat < 1 or number < 1:
        raise UsageError("repeat and number must be >= 1")
    art = _as_artifact(artifact)
    feeds = artifact_inputs(art.inputs, seed) if inputs is None else inputs
    with Session(art, rpc) as session:
        return session.time(feeds, repeat, number)


def wall_clock_ms(fn: Any, repeat: int, warmup: int = 2) -> dict[str, float]:
    """Median/min of `repeat` wall-clock calls of `fn` after `warmup` calls (ms)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(samples), "min_ms": min(samples), "repeat": repeat}
