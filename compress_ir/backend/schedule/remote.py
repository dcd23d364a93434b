"""Tuning on devices behind a TVM RPC tracker: MetaSchedule's RPC runner, one worker per board.

Why: candidates must be measured on the CPU/GPU they are tuned for, so a cross target
(aarch64 boards, a GPU box) cannot be tuned with the LocalRunner. With `--rpc
HOST:PORT:KEY` the candidates are built here (cross-linked into a shared library for
aarch64, since a board has no compiler), and measured by `ms.runner.RPCRunner` through
the tracker: it asks the tracker for a free device under KEY for every candidate, with as
many parallel workers as the tracker lists servers for KEY, so a farm of N boards measures
N candidates at a time. Every session is bounded (`session_timeout_sec`, and the worker
pool kills a worker that outlives it), so a board that dies or a tracker with no free
board costs that candidate a failed measurement, never a hang.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Any

from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

from compress_ir.core.errors import UsageError
from compress_ir.core.limits import DEFAULT_RPC_TIMEOUT


@dataclass(frozen=True)
class RemoteTuning:
    """Where candidates are measured: a tracker, a device key, how many boards, time bounds."""

    host: str
    port: int
    key: str
    servers: int  # boards registered under `key` when tuning started
    timeout: float  # seconds per candidate session (request + upload + run)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}:{self.key}"

    def to_dict(self) -> dict[str, Any]:
        """For reports: which tracker/key measured the candidates, with how many boards."""
        return {"rpc": str(self), "servers": self.servers, "session_timeout_s": self.timeout}


def remote_tuning(rpc: str, timeout: float = DEFAULT_RPC_TIMEOUT) -> RemoteTuning:
    """Check the tracker and count its boards for the key; one-line UsageErrors otherwise."""
    from compress_ir.backend.runner import parse_rpc, tracker_servers

    addr = parse_rpc(rpc)
    if not addr.key:
        raise UsageError(f"--rpc {rpc}: tuning over RPC needs a tracker and device key "
                         "(HOST:PORT:KEY): MetaSchedule's RPC runner asks a tracker for boards")
    total, _free = tracker_servers(addr, timeout)
    return RemoteTuning(addr.host, addr.port, addr.key, total, float(timeout))


def export_shared(mod: Any) -> str:
    """MetaSchedule export: a shared library linked here (the x86 host compiler)."""
    path = os.path.join(tempfile.mkdtemp(prefix="cir-ms-"), "candidate.so")
    mod.export_library(path)
    return path


def export_aarch64(mod: Any) -> str:
    """MetaSchedule export for aarch64 boards: cross-linked here, a board has no compiler."""
    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="cir-ms-"), "candidate.so")
    mod.export_library(path, fcompile=cc.cross_compiler("aarch64-linux-gnu-gcc"))
    return path


FAILED_RUN_S = 1e9  # MetaSchedule records a failed build/run with a run time of 1e10 s


def measured_tasks(db: Any, wl_mods: list[Any]) -> int:
    """How many workloads have a best record with a real time (not a failure's 1e10 s)."""
    count = 0
    for mod in wl_mods:
        if not db.has_workload(mod):
            continue
        top = db.get_top_k(db.commit_workload(mod), 1)
        if top and top[0].run_secs and min(float(s) for s in top[0].run_secs) < FAILED_RUN_S:
            count += 1
    return count


def export_function(target: Target) -> Any:
    """How candidates for `target` are packaged for the remote side."""
    triple = str(target.attrs.get("mtriple", "") or "")
    host = target.host if target.host is not None else None
    host_triple = str(host.attrs.get("mtriple", "") or "") if host is not None else ""
    if triple.startswith(("aarch64", "arm64")) or host_triple.startswith(("aarch64", "arm64")):
        return export_aarch64
    return export_shared


def runner(remote: RemoteTuning, evaluator_config: ms.runner.EvaluatorConfig | None = None
           ) -> ms.runner.RPCRunner:
    """An RPCRunner on the tracker key: one worker per board, every session time-bounded."""
    from tvm.support.popen_pool import PopenPoolExecutor

    config = ms.runner.RPCConfig(tracker_host=remote.host, tracker_port=remote.port,
                                 tracker_key=remote.key,
                                 session_timeout_sec=max(1, int(remote.timeout)))
    workers = max(1, remote.servers)
    result = ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator_config,
                                 max_workers=workers)
    # RPCRunner's pool has no timeout: a worker waiting on a tracker whose boards all died
    # would wait forever. This pool kills a worker after the session bound.
    old, result.pool = result.pool, PopenPoolExecutor(max_workers=workers, timeout=remote.timeout)
    old.shutdown(wait=True)
    return result
