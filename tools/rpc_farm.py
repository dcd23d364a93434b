"""A TVM RPC device farm on localhost: one tracker and N servers registered under a key.

Why: `--rpc HOST:PORT:KEY` (run, verify, `--benchmark`, tuning) is meant for a farm of
boards behind a tracker; this makes one on this machine so the whole path — tracker
queue, several servers under one key, sessions, timeouts, a server dying — runs in CI
and on a laptop. Local x86 servers are plain `python -m tvm.exec.rpc_server`
processes; with `--arm N` (and `COMPRESS_IR_ARM_ROOTFS` or `--rootfs` naming the
rootfs of tools/arm/setup_rootfs.sh, plus qemu-aarch64 installed) N more servers run
the aarch64 TVM runtime under qemu user-mode emulation, registered under the arm key.
qemu timings prove the path, not a board's speed.

Command line (prints the addresses, stops cleanly on Ctrl-C / SIGTERM)::

    python tools/rpc_farm.py --servers 2                     # x86 key "x86"
    python tools/rpc_farm.py --servers 1 --arm 2 --rootfs ~/.cache/compress-ir/arm64-rootfs

From Python / tests (free ports, never fixed)::

    with Farm(servers=2) as farm:
        run_artifact(art, rpc=farm.address("x86"))
        farm.kill_server(0)          # a board dying

Every process runs in its own process group and is killed with it (the server forks a
child per session), so nothing outlives the farm.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
X86_KEY = "x86"
ARM_KEY = "arm"
READY_TIMEOUT_S = 60.0  # x86 servers import TVM in ~2-10 s
ARM_READY_TIMEOUT_S = 300.0  # `import tvm` under qemu takes 15-40 s per server


class FarmError(RuntimeError):
    """The farm could not start (a process died, a server never registered)."""


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the OS picks it; a race is retried by the caller)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _check_artifact_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_cir_check_artifact",
                                                  HERE / "arm" / "check_artifact.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@dataclass
class Proc:
    """One process of the farm: what it is, its port, its log and the Popen handle."""

    role: str  # "tracker" or "server"
    key: str | None
    port: int
    log: Path
    popen: subprocess.Popen = field(repr=False)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the server's per-session child too)."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def log_tail(self, lines: int = 3) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])


class Farm:
    """A tracker plus servers on localhost; a context manager that cleans up after itself."""

    def __init__(self, servers: int = 2, key: str = X86_KEY, arm_servers: int = 0,
                 arm_key: str = ARM_KEY, rootfs: str | os.PathLike | None = None,
                 host: str = HOST, threads: int | None = None,
                 ready_timeout: float | None = None) -> None:
        if servers < 0 or arm_servers < 0 or servers + arm_servers < 1:
            raise ValueError("a farm needs at least one server")
        self.host = host
        self.counts = {key: servers} if servers else {}
        if arm_servers:
            self.counts[arm_key] = arm_servers
        self.key, self.arm_key = key, arm_key
        self.rootfs = rootfs
        self.threads = threads
        self.ready_timeout = ready_timeout
        self.tracker: Proc | None = None
        self.servers: list[Proc] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    # -- addresses -----------------------------------------------------------------
    @property
    def tracker_address(self) -> str:
        """`host:port` of the tracker."""
        if self.tracker is None:
            raise FarmError("the farm is not started")
        return f"{self.host}:{self.tracker.port}"

    def address(self, key: str | None = None) -> str:
        """`host:port:key`, the `--rpc` value for a device key of this farm."""
        return f"{self.tracker_address}:{key or self.key}"

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> Farm:
        """Start the tracker and every server; return once all are registered and free."""
        self._tmp = tempfile.TemporaryDirectory(prefix="cir-rpc-farm-")
        try:
            self.tracker = self._spawn("tracker", None, self._tracker_cmd, self._python_env())
            self._wait_listening(self.tracker, 30.0)
            arm = None
            if self.arm_key in self.counts:
                arm = _check_artifact_module().find_rootfs(Path(self._rootfs_path()))
            for key, count in self.counts.items():
                for _ in range(count):
                    if key == self.arm_key and arm is not None:
                        self.servers.append(self._spawn(
                            "server", key, lambda port, k=key: self._qemu_server_cmd(arm, port, k),
                            self._qemu_env(arm)))
                    else:
                        self.servers.append(self._spawn(
                            "server", key, lambda port, k=key: self._server_cmd(port, k),
                            self._python_env()))
            for key, count in self.counts.items():
                timeout = self.ready_timeout or (ARM_READY_TIMEOUT_S if key == self.arm_key
                                                 and arm is not None else READY_TIMEOUT_S)
                self.wait_free(key, count, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kill every server, then the tracker; remove the logs folder."""
        for proc in self.servers:
            proc.kill(signal.SIGTERM)
        if self.tracker is not None:
            self.tracker.kill(signal.SIGTERM)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Farm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kill_server(self, index: int) -> None:
        """SIGKILL one server (and its session child): a board that dies."""
        self.servers[index].kill(signal.SIGKILL)

    # -- tracker queries -----------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The tracker's summary (queue_info per key, server_info)."""
        from tvm import rpc

        return rpc.connect_tracker(self.host, self.tracker.port).summary()

    def free(self, key: str) -> int:
        """Servers under `key` the tracker would hand out now."""
        info = (self.summary().get("queue_info") or {}).get(key) or {}
        return int(info.get("free", 0))

    def wait_free(self, key: str, count: int, timeout: float) -> None:
        """Wait until `count` servers under `key` are registered and free."""
        deadline = time.monotonic() + timeout
        while True:
            dead = [p for p in self.servers if p.key == key and not p.alive()]
            if dead:
                raise FarmError(f"RPC server for {key!r} on port {dead[0].port} exited "
                                f"(code {dead[0].popen.returncode}): {dead[0].log_tail()}")
            try:
                if self.free(key) >= count:
                    return
            except Exception:  # noqa: BLE001, S110 - tracker not answering yet: keep waiting
                pass
            if time.monotonic() > deadline:
                raise FarmError(f"only {self.free(key)} of {count} RPC servers for {key!r} "
                                f"registered within {timeout:g} s")
            time.sleep(0.3)

    # -- processes -----------------------------------------------------------------
    def _spawn(self, role: str, key: str | None, make_cmd: Any, env: dict[str, str]) -> Proc:
        """Start one process on a free port (retried if another process grabbed it)."""
        assert self._tmp is not None
        for attempt in range(5):
            port = free_port(self.host)
            log = Path(self._tmp.name) / f"{role}-{key or 'tracker'}-{port}.log"
            with open(log, "wb") as fh:
                popen = subprocess.Popen(make_cmd(port), stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         cwd=self._tmp.name, start_new_session=True)
            proc = Proc(role, key, port, log, popen)
            time.sleep(0.05)
            if proc.alive() or attempt == 4:
                return proc
        return proc

    def _wait_listening(self, proc: Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise FarmError(f"RPC {proc.role} exited (code {proc.popen.returncode}): "
                                f"{proc.log_tail()}")
            try:
                with socket.create_connection((self.host, proc.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise FarmError(f"RPC {proc.role} did not listen on port {proc.port} within "
                        f"{timeout:g} s")

    def _tracker_cmd(self, port: int) -> list[str]:
        return [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", self.host,
                "--port", str(port), "--port-end", str(port + 1)]

    def _server_args(self, port: int, key: str) -> list[str]:
        return ["-m", "tvm.exec.rpc_server", "--host", self.host, "--port", str(port),
                "--port-end", str(port + 1), "--tracker", self.tracker_address, "--key", key]

    def _server_cmd(self, port: int, key: str) -> list[str]:
        return [sys.executable, *self._server_args(port, key)]

    def _qemu_server_cmd(self, fs: Any, port: int, key: str) -> list[str]:
        # tools/arm/rpc_server.py: TVM's listener without its exec'd PopenWorker (no
        # binfmt_misc needed); same arguments as tvm.exec.rpc_server
        return [fs.qemu, "-L", str(fs.path), str(fs.python), "-s", "-B",
                str(HERE / "arm" / "rpc_server.py"), *self._server_args(port, key)[2:]]

    def _python_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("PYTHONWARNINGS", None)
        if self.threads:
            env["TVM_NUM_THREADS"] = str(self.threads)
        return env

    def _qemu_env(self, fs: Any) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "PYTHONPATH": str(fs.site), "HOME": "/tmp"}
        if self.threads:
            env["TVM_NUM_THREADS"] = str(self.threads)
        return env

    def _rootfs_path(self) -> str:
        path = self.rootfs or os.environ.get("COMPRESS_IR_ARM_ROOTFS")
        if not path:
            raise FarmError("arm servers need the rootfs of tools/arm/setup_rootfs.sh: "
                            "--rootfs DIR or COMPRESS_IR_ARM_ROOTFS")
        return os.path.expanduser(str(path))

    def describe(self) -> list[str]:
        """One line per key and process, for the command line."""
        lines = [f"tracker {self.tracker_address}"]
        for key, count in self.counts.items():
            ports = [str(p.port) for p in self.servers if p.key == key]
            kind = "qemu-aarch64" if key == self.arm_key and key != self.key else "x86"
            lines.append(f"  key {key!r}: {count} {kind} server(s) on ports "
                         f"{', '.join(ports)} -> --rpc {self.address(key)}")
        return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", type=int, default=2, help="local x86 servers (default 2)")
    p.add_argument("--key", default=X86_KEY, help=f"their device key (default {X86_KEY})")
    p.add_argument("--arm", type=int, default=0, metavar="N",
                   help="servers under qemu-aarch64 (needs --rootfs or COMPRESS_IR_ARM_ROOTFS)")
    p.add_argument("--arm-key", default=ARM_KEY, help=f"their device key (default {ARM_KEY})")
    p.add_argument("--rootfs", help="arm64 rootfs made by tools/arm/setup_rootfs.sh")
    p.add_argument("--threads", type=int, help="TVM_NUM_THREADS of every server")
    return p


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the farm like Ctrl-C: the finally cleans up


def main(argv: list[str] | None = None) -> int:
    """Run a farm until Ctrl-C or SIGTERM."""
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    farm = Farm(servers=args.servers, key=args.key, arm_servers=args.arm, arm_key=args.arm_key,
                rootfs=args.rootfs, threads=args.threads)
    try:
        farm.start()
        for line in farm.describe():
            print(line, flush=True)
        print("Ctrl-C or SIGTERM stops the farm", flush=True)
        while all(p.alive() for p in [farm.tracker, *farm.servers]):
            time.sleep(1.0)
        dead = next(p for p in [farm.tracker, *farm.servers] if not p.alive())
        print(f"rpc_farm: {dead.role} on port {dead.port} exited: {dead.log_tail()}",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except (FarmError, ValueError) as exc:
        print(f"rpc_farm: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - e.g. check_artifact's UsageError (no rootfs)
        print(f"rpc_farm: error: {exc}", file=sys.stderr)
        return 2
    finally:
        farm.stop()


if __name__ == "__main__":
    sys.exit(main())
