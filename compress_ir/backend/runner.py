"""Run and time artifacts: locally with the TVM runtime, or on a device through TVM RPC.

`--rpc host:port` talks to an RPC server (`python -m tvm.exec.rpc_server`),
`host:port:key` asks a tracker for a device registered under `key`. The
library is uploaded, loaded remotely and driven by a Relax VM there.
"""

from __future__ import annotations

import contextlib
import gc
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from compress_ir.backend.artifact import Artifact, artifact_inputs, check_inputs, load_artifact
from compress_ir.backend.elf import EM_AARCH64, EM_X86_64, check_library, host_machine
from compress_ir.core.errors import ModelLoadError, UsageError
from compress_ir.core.limits import DEFAULT_RPC_TIMEOUT, RPC_SESSION_MAX_S, deadline
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
    if not 1 <= port <= 65535:
        raise UsageError(f"--rpc {text!r}: port {port} is not in 1..65535")
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
    tvm_target = art_meta.get("tvm_target", {})
    mtriple = str(tvm_target.get("mtriple", "")) if isinstance(tvm_target, dict) else ""
    if family == "arm" or mtriple.startswith("aarch64"):
        return "aarch64 code cannot run on this x86 host (use --rpc or tools/arm)"
    if not host.is_x86_64():
        return f"x86 code cannot run on this {platform.machine()} host"
    missing = [f for f in spec.get("required_cpu_flags", []) if f not in host.cpu_flags()]
    if missing:
        return f"this CPU lacks {', '.join(missing)}"
    return None


class Session:
    """A loaded artifact: VM + device, local or behind an RPC session."""

    def __init__(self, art: Artifact, rpc: str | None = None,
                 timeout: float | None = DEFAULT_RPC_TIMEOUT,
                 remote: Remote | None = None) -> None:
        import tvm
        from tvm import relax

        self.art = art
        self.where = "local"
        self._remote = None
        self._timeout = timeout
        self._addr: RpcAddress | None = None
        if rpc or remote is not None:
            # a shared `remote` puts several artifacts on one device (same-device ratios)
            remote = remote or open_remote(rpc or "", timeout)
            self._addr = remote.addr
            check_library(art.library, _expected_machine(art.meta), f"artifact {art.path}")
            self._remote = remote.session
            self.where = remote.where
            name = f"{art.meta.get('model_sha256', 'model')[:16]}-{art.library.name}"
            with self._deadline("upload"), self._transport_errors("upload"):
                self._remote.upload(str(art.library), target=name)
                lib = self._remote.load_module(name)
            self.device = self._remote.cuda(0) if art.device == "cuda" else self._remote.cpu(0)
        else:
            blocker = local_run_blocker(art.meta)
            if blocker:
                raise UsageError(f"artifact {art.path} ({art.target}) cannot run here: "
                                 f"{blocker}")
            check_library(art.library, host_machine(), f"artifact {art.path}")
            try:
                lib = tvm.runtime.load_module(str(art.library))
            except Exception as exc:  # noqa: BLE001 - dlopen/TVM errors on a bad library
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
                raise ModelLoadError(f"artifact {art.path}: cannot load its library: "
                                     f"{first}") from None
            self.device = tvm.cuda(0) if art.device == "cuda" else tvm.cpu(0)
        with self._deadline("load"), self._transport_errors("load"):
            try:
                self.vm = relax.VirtualMachine(lib, self.device)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - not a Relax VM executable
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:200]
                raise ModelLoadError(f"artifact {art.path}: its library is not a compiled "
                                     f"compress-ir model: {first}") from None

    @contextlib.contextmanager
    def _module_errors(self, step: str) -> Any:
        """The compiled module refusing what meta.json says it takes: a broken artifact."""
        try:
            yield
        except (UsageError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
            if "DeadlineExceeded" in f"{type(exc).__name__} {exc}":
                raise
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            first = (lines[-1] if lines else type(exc).__name__)[:300]
            if self._addr is not None and not self._remote_alive():
                raise UsageError(f"RPC {self._addr}: lost the device during {step} "
                                 f"({self.where}): {first}") from None
            raise ModelLoadError(f"artifact {self.art.path}: the module fails at {step} "
                                 f"(does meta.json match model.so?): {first}") from None

    @contextlib.contextmanager
    def _transport_errors(self, step: str) -> Any:
        """A server that dies (or a session that expires) while we talk to it: one line."""
        try:
            yield
        except (UsageError, ModelLoadError, KeyboardInterrupt, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - TVM raises its own error types
            if self._addr is None or "DeadlineExceeded" in f"{type(exc).__name__} {exc}":
                raise
            if self._remote_alive():
                raise
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            first = (lines[-1] if lines else type(exc).__name__)[:300]
            raise UsageError(f"RPC {self._addr}: lost the device during {step} "
                             f"({self.where}): {first}") from None

    def _remote_alive(self) -> bool:
        """Whether the RPC session still answers a trivial call (within 5 s)."""
        try:
            with deadline(min(self._timeout or 5.0, 5.0), "RPC probe"):
                # a real round trip (device.exist is answered from a local cache)
                self._remote.get_function("runtime.GetDeviceAttr")
            return True
        except Exception:  # noqa: BLE001 - any failure means it does not answer
            return False

    def _deadline(self, step: str) -> Any:
        """Every remote call is bounded: a server that stops answering cannot hang us."""
        if self._addr is None:
            return contextlib.nullcontext()
        return deadline(self._timeout, f"RPC {self._addr} ({step})")

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
        with self._deadline("inputs"), self._transport_errors("inputs"):
            args = self.tensors(inputs)
        with self._deadline("run"), self._module_errors("run"):
            self.vm.set_input("main", *args)
            self.vm.invoke_stateful("main")
            result = self.vm.get_outputs("main")
            values = list(result) if isinstance(result, tuple) else [result]
            values = [v.numpy() for v in values]
        names = [o.name for o in self.art.outputs]
        if len(values) != len(names):
            raise ModelLoadError(f"artifact {self.art.path}: module returned {len(values)} "
                                 f"outputs, meta.json lists {len(names)}")
        return dict(zip(names, values, strict=True))

    def timer(self, inputs: dict[str, np.ndarray], number: int = 1) -> Any:
        """A callable timing `number` VM calls on the device per call (ms per call).

        For interleaved benchmarks: one sample per call, timed by TVM on the device;
        over RPC every call is bounded by the timeout and a dead server is named.
        """
        with self._deadline("inputs"), self._transport_errors("inputs"):
            args = self.tensors(inputs)
        with self._deadline("timing"), self._module_errors("timing"):
            self.vm["main"](*args)  # warm-up (first call allocates)
            evaluator = self.vm.time_evaluator("main", self.device, number=number, repeat=1)

        def once() -> float:
            with self._deadline("timing"), self._module_errors("timing"):
                return float(evaluator(*args).results[0]) * 1e3

        return once

    def time(self, inputs: dict[str, np.ndarray], repeat: int, number: int = 1
             ) -> dict[str, Any]:
        """VM `time_evaluator` on the device: `repeat` samples of `number` calls each."""
        with self._deadline("inputs"), self._transport_errors("inputs"):
            args = self.tensors(inputs)
        with self._deadline("timing"), self._module_errors("timing"):
            self.vm["main"](*args)  # warm-up (first call allocates)
            evaluator = self.vm.time_evaluator("main", self.device, number=number,
                                               repeat=repeat)
            samples = [float(s) * 1e3 for s in evaluator(*args).results]
        return {"median_ms": statistics.median(samples), "min_ms": min(samples),
                "repeat": repeat, "number": number, "method": "vm.time_evaluator",
                "where": self.where}


TRACKER_KEY_GRACE = 5.0  # seconds a tracker gets to list a device key before we give up


def _expected_machine(meta: dict[str, Any]) -> int | None:
    """The ELF machine an artifact's library must have (from meta.json)."""
    recorded = meta.get("elf_machine")
    if isinstance(recorded, int) and not isinstance(recorded, bool):
        return recorded
    family = meta.get("target_spec", {}).get("family") if isinstance(
        meta.get("target_spec"), dict) else None
    return EM_AARCH64 if family == "arm" else (EM_X86_64 if family == "x86" else None)


@dataclass(frozen=True)
class Remote:
    """An open RPC session: the address asked for, the server that answered, the session."""

    addr: RpcAddress
    server: str  # host:port of the RPC server the session runs on
    session: Any

    @property
    def where(self) -> str:
        """For reports: which key and which server ran it."""
        return f"rpc {self.addr}" + (f" (server {self.server})" if self.addr.key else "")


def open_remote(rpc: str, timeout: float | None = DEFAULT_RPC_TIMEOUT) -> Remote:
    """One RPC session (to a server, or to a free device of a tracker key), bounded in time."""
    addr = parse_rpc(rpc)
    server, session = _connect(addr, timeout)
    return Remote(addr, server, session)


def _connect(addr: RpcAddress, timeout: float | None = DEFAULT_RPC_TIMEOUT
             ) -> tuple[str, Any]:
    """Connect (server, or tracker + key) with a deadline; an unknown key fails fast.

    Returns the answering server's `host:port` and the session. A key the tracker
    knows but whose devices are all busy is waited for until the deadline.
    """
    from tvm import rpc

    # the server ends a session after this long whatever happens (a stuck client cannot
    # hold a board forever); each call is bounded by `timeout` on our side
    session_timeout = int(max(timeout or 0, RPC_SESSION_MAX_S))
    try:
        if addr.key:
            with deadline(timeout, f"RPC {addr} (connect)"):
                tracker = rpc.connect_tracker(addr.host, addr.port)
                summary = tracker.summary()
                keys = _tracker_keys(summary)
                wait_until = time.monotonic() + TRACKER_KEY_GRACE
                while addr.key not in keys and time.monotonic() < wait_until:
                    time.sleep(0.2)  # a board that just started may still be registering
                    summary = tracker.summary()
                    keys = _tracker_keys(summary)
                if addr.key not in keys:
                    raise UsageError(f"RPC tracker {addr.host}:{addr.port} has no device "
                                     f"{addr.key!r} (known: {', '.join(sorted(keys)) or 'none'})")
            busy = _busy_note(summary, addr.key)
            try:
                with deadline(timeout, f"RPC {addr} (request)"):
                    return _request(tracker, addr.key, session_timeout)
            except UsageError as exc:
                if busy and "no answer within" in str(exc):
                    raise UsageError(f"RPC tracker {addr.host}:{addr.port}: no free {addr.key!r} "
                                     f"device within {timeout:g} s ({busy}; --rpc-timeout)"
                                     ) from None
                raise
        with deadline(timeout, f"RPC {addr} (connect)"):
            return (f"{addr.host}:{addr.port}",
                    rpc.connect(addr.host, addr.port, session_timeout=session_timeout))
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - socket errors arrive as TVMError/RuntimeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot reach RPC {addr}: {first}") from None


def tracker_servers(addr: RpcAddress, timeout: float | None = DEFAULT_RPC_TIMEOUT
                    ) -> tuple[int, int]:
    """(registered, free) servers under `addr.key`; a UsageError when there are none.

    Why: tuning sizes its worker pool by the boards a key has, and must fail at once,
    in one line, on a tracker that is down or has no such key.
    """
    from tvm import rpc

    assert addr.key
    try:
        with deadline(timeout, f"cannot reach RPC tracker {addr.host}:{addr.port}"):
            tracker = rpc.connect_tracker(addr.host, addr.port)
            wait_until = time.monotonic() + TRACKER_KEY_GRACE
            while True:
                summary = tracker.summary()
                keys = _tracker_keys(summary)
                if addr.key in keys or time.monotonic() >= wait_until:
                    break
                time.sleep(0.2)  # a board that just started may still be registering
            tracker.close()
    except UsageError:
        raise
    except Exception as exc:  # noqa: BLE001 - socket errors arrive as TVMError/RuntimeError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"cannot reach RPC tracker {addr.host}:{addr.port}: {first}") from None
    if addr.key not in keys:
        raise UsageError(f"RPC tracker {addr.host}:{addr.port} has no device "
                         f"{addr.key!r} (known: {', '.join(sorted(keys)) or 'none'})")
    servers = [s for s in summary.get("server_info") or []
               if isinstance(s, dict) and str(s.get("key", "")) in (f"server:{addr.key}",
                                                                      addr.key)]
    free = int(((summary.get("queue_info") or {}).get(addr.key) or {}).get("free", 0))
    return max(len(servers), free), free


def _request(tracker: Any, key: str, session_timeout: int) -> tuple[str, Any]:
    """`TrackerSession.request`, keeping the address of the server it hands out.

    Why not the TVM call: it does not say which server answered, and a report must
    say which device ran what. A server that died after its last heartbeat is retried
    once (the tracker drops it when its connection closes).
    """
    from tvm import rpc
    from tvm.rpc import base

    last: Exception | None = None
    for _ in range(2):
        try:
            if tracker._sock is None:  # noqa: SLF001 - reconnect as TrackerSession does
                tracker._connect()  # noqa: SLF001
            base.sendjson(tracker._sock, [base.TrackerCode.REQUEST, key, "", 1])  # noqa: SLF001
            value = base.recvjson(tracker._sock)  # noqa: SLF001
            if value[0] != base.TrackerCode.SUCCESS:
                raise RuntimeError(f"tracker answered {value!s}")
            url, port, matchkey = value[1]
            return f"{url}:{port}", rpc.connect(url, port, matchkey, session_timeout)
        except Exception as exc:  # noqa: BLE001 - one retry on a stale server, as TVM does
            if "DeadlineExceeded" in f"{type(exc).__name__} {exc}":
                raise
            last = exc
            tracker.close()
    assert last is not None
    raise last


def _busy_note(summary: Any, key: str) -> str | None:
    """'all N busy' when the tracker lists servers for `key` but none free, else None."""
    if not isinstance(summary, dict):
        return None
    info = (summary.get("queue_info") or {}).get(key) or {}
    if info.get("free", 0):
        return None
    servers = [s for s in summary.get("server_info") or []
               if isinstance(s, dict) and str(s.get("key", "")) in (f"server:{key}", key)]
    return f"all {len(servers)} busy" if servers else "none free"


def _tracker_keys(summary: Any) -> set[str]:
    """Device keys a tracker's summary lists (queue and registered servers)."""
    keys: set[str] = set()
    if isinstance(summary, dict):
        for key, info in (summary.get("queue_info") or {}).items():
            if isinstance(info, dict) and info.get("free", 0):
                keys.add(str(key))
        for server in summary.get("server_info") or []:
            key = str(server.get("key", "")) if isinstance(server, dict) else ""
            keys.add(key.partition(":")[2] if key.startswith("server:") else key)
    keys.discard("")
    return keys


def _as_artifact(artifact: str | Artifact) -> Artifact:
    return artifact if isinstance(artifact, Artifact) else load_artifact(artifact)


def run_artifact(artifact: str | Artifact, inputs: dict[str, np.ndarray] | None = None,
                 rpc: str | None = None, seed: int = 0,
                 rpc_timeout: float | None = DEFAULT_RPC_TIMEOUT) -> dict[str, np.ndarray]:
    """Outputs by name; seeded random inputs (meta.json shapes) when `inputs` is None."""
    art = _as_artifact(artifact)
    feeds = artifact_inputs(art.inputs, seed) if inputs is None else inputs
    with Session(art, rpc, rpc_timeout) as session:
        return session.run(feeds)


def time_artifact(artifact: str | Artifact, inputs: dict[str, np.ndarray] | None = None,
                  rpc: str | None = None, repeat: int = 10, number: int = 1, seed: int = 0,
                  rpc_timeout: float | None = DEFAULT_RPC_TIMEOUT) -> dict[str, Any]:
    """Median/min latency in ms over `repeat` samples, timed on the device by TVM.

    `vm.time_evaluator` times only the VM call (inputs already on the device), on
    the remote side for RPC, so network transfer is not counted.
    """
    if repeat < 1 or number < 1:
        raise UsageError("repeat and number must be >= 1")
    art = _as_artifact(artifact)
    feeds = artifact_inputs(art.inputs, seed) if inputs is None else inputs
    with Session(art, rpc, rpc_timeout) as session:
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
