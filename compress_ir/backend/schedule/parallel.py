"""Parallel loops only where the work pays for waking the thread pool.

Why: every parallel loop is a fork/join of TVM's worker threads; without spin-waiting (how
a process shares cores with other work, and how the benchmarks run both engines) a
wake-up costs microseconds, more than a small kernel's whole run. MobileNetV3-Small (about
50 kernels, most on 7x7 to 28x28 maps, squeeze-excitation FCs) ran 1.2 ms on one thread and
1.8 ms on two. A kernel whose work is below `MIN_PARALLEL_WORK` runs on the calling thread.

The floor was 4M (set with spinning off). With TVM's default spinning, measured at 2
threads with one engine per process (`tools/bench_tvm.py --isolate`, 2026-12-04), it kept
the pruned SqueezeNet and MobileNetV2 entirely on one core. At 1M, same-build A/B at 2
threads: pruned MobileNetV2 0.71 of the time and pruned SqueezeNet 0.95 (TVM unpinned, two
runs each); pruned EfficientNet-B0 0.71, ShuffleNet v1 0.88, RegNetX 0.90, MobileNetV2 0.95,
MobileNetV3-Small 0.99 (with TVM's default pinning, one run each: noisy, see
tools/results/tvm_speed/zen5/README.md). At 512K MobileNetV3-Small, whose SE and 7x7 kernels
are the smallest, ran 1.13x slower. At 1 thread
nothing changes: TVM runs a parallel loop inline when started with one thread.

Now 128K (Intel Xeon VM, 2026-12-04, 2 threads, TVM's default spinning, i.e.
TVM_THREAD_POOL_SPIN_COUNT unset: 300000 yields, tens of ms; same-process A/B, 9 rounds,
ms, 1M -> 128K): MobileNetV3-Small 1.90 -> 1.61, pruned 0.87 -> 0.75, ShuffleNet v1
4.54 -> 3.49, pruned 2.29 -> 1.61, pruned MobileNetV2 1.62 -> 1.29, pruned GoogLeNet
4.65 -> 4.15, pruned ResNet-18 4.27 -> 4.02. Below 128K nothing moved by more than the
noise. A woken worker costs 40-90 us on this VM, a spinning one 1-5 us: with spinning off
(TVM_THREAD_POOL_SPIN_COUNT=0) the small kernels do not pay (MobileNetV3-Small 2.69 ->
3.13, pruned 0.93 -> 1.24; pruned MobileNetV2 2.62 -> 2.45), and such a model is faster on
one thread anyway (2.0 ms).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

from tvm import s_tir, tirx

MIN_PARALLEL_WORK = 1 << 17  # scalar multiply-adds / element operations (see `work`)

_work: contextvars.ContextVar[int | None] = contextvars.ContextVar("work", default=None)


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
def scheduling(amount: int) -> Iterator[None]:
    """Within the block, `parallel` compares `amount` (the function's `work`) to its floor."""
    token = _work.set(amount)
    try:
        yield
    finally:
        _work.reset(token)


def parallel(sch: s_tir.Schedule, loop: s_tir.schedule.LoopRV,
             min_work: int | None = None) -> None:
    """`sch.parallel(loop)`, unless the function being scheduled is too small to pay
    (its `work` under `min_work`, default `MIN_PARALLEL_WORK`; outside `scheduling`,
    always parallel)."""
    amount = _work.get()
    if amount is None or amount >= (MIN_PARALLEL_WORK if min_work is None else min_work):
        sch.parallel(loop)
