"""A TVM RPC server that runs under qemu-aarch64 user-mode emulation (inside the rootfs).

Why not `python -m tvm.exec.rpc_server`: it starts its listener in a PopenWorker, a new
process exec'd from `sys.executable`; under qemu user mode without binfmt_misc (containers,
CI) exec'ing an aarch64 binary fails ("Exec format error"). This runs the same listener
(TVM's own `PopenRPCServerState`) in this process instead; every session is still served
by a forked child, which needs no exec. Only the standard library and TVM are used.

    qemu-aarch64-static -L ROOTFS ROOTFS/usr/bin/python3.11 rpc_server.py \
        --host 127.0.0.1 --port 9091 --tracker 127.0.0.1:9190 --key arm
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    """Serve until killed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9091)
    p.add_argument("--port-end", type=int, default=9199)
    p.add_argument("--tracker", help="HOST:PORT of the tracker to register with")
    p.add_argument("--key", default="", help="device key at the tracker")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from tvm.rpc.server import PopenRPCServerState

    tracker = None
    if args.tracker:
        host, _, port = args.tracker.rpartition(":")
        tracker = (host, int(port))
    state = PopenRPCServerState(args.host, args.port, args.port_end, tracker_addr=tracker,
                                key=args.key)
    PopenRPCServerState.current = state
    state.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
