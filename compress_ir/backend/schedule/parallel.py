"""Parallel loops only where the work pays for waking the thread pool.

Why: every parallel loop is a fork/join of TVM's worker threads; without spin-waiting (how
a process shares cores with other work, and how the benchmarks run both engines) a
wake-up costs microseconds, more than a small kernel's whole run. MobileNetV3-Small (about
50 kernels, most on 7x7 to 28x28 maps, squeeze-excitation FCs) ran 1.2 ms on one thread and
1.8 ms on two. A kernel whose work is below `MIN_PARALLEL_WORK` runs on the calling thread.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from tvm import s_tir, tirx

MIN_PARALLEL_WORK = 1 << 22  # scalar multiply-adds / element operations (see `work`)

_serial: contextvars.ContextVar[bool] = contextvars.ContextVar("serial", default=False)


def work(func: tirx.PrimFunc) -> int:
    """Sum over the function's blocks of the product of their iterator extents (spatial and
    reduce): the scalar operations the function performs, up to a constant per block."""
    sch = s_tir.Schedule(func)
    root = sch.get_sblock(func.body.block.name_hint)
    total = 0
    for rv in sch.get_child_blocks(root):
        n = 1
        for iv in sch.get(rv).iter_vars:
            ext = iv.dom.extent
            n *= int(ext) if isinstance(ext, tirx.IntImm) else 1 << 20
        total += n
    return total


@contextlib.contextmanager
def serial_if(small: bool) -> Iterator[None]:
    """Within the block, `parallel` leaves loops serial when `small`."""
    token = _serial.set(small)
    try:
        yield
    finally:
        _serial.reset(token)


def parallel(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV) -> None:
    """`sch.parallel(loop)`, unless the function being scheduled is too small to pay."""
    if not _serial.get():
        sch.parallel(loop)
