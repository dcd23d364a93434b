"""Paired confidence intervals for a metric change measured on the same evaluation items.

Why: the transformer benchmark scores every compressed model on the same 500 retrieval
pairs as the dense model. Taken alone, each recall@1 has a standard error of about 0.022,
more than twice the issue's 2 % bar (0.009 at recall 0.45), so two numbers cannot say
whether a gap is real. Most pairs are hit, or missed, by both models; only the pairs on
which they disagree carry the difference. A bootstrap over pairs that resamples each
pair's (dense, compressed) outcomes together gives the interval of the relative change
that the unpaired errors hide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairedChange:
    """Relative change of the mean (variant / base - 1) with its bootstrap interval."""

    change: float
    low: float
    high: float
    gained: int  # items the variant hits and the base misses
    lost: int  # items the base hits and the variant misses

    def text(self) -> str:
        """`-5.7 % [-8.9, -2.6]`: the change and its interval, in percent."""
        return (f"{self.change * 100:+.1f} % [{self.low * 100:+.1f}, "
                f"{self.high * 100:+.1f}]")


def encode_hits(hits: np.ndarray) -> str:
    """Per-item outcomes as a '0'/'1' string (compact in a results JSON)."""
    return "".join("1" if h else "0" for h in np.asarray(hits, dtype=bool))


def decode_hits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) == ord("1")


def paired_change(base: np.ndarray, variant: np.ndarray, rounds: int = 10000,
                  level: float = 0.95, seed: int = 0) -> PairedChange:
    """Percentile bootstrap over items of mean(variant) / mean(base) - 1.

    `base` and `variant` hold one outcome (hit = 1) per evaluation item, in the same
    item order. Resamples with a mean of zero for the base are dropped.
    """
    b = np.asarray(base, dtype=np.float64)
    v = np.asarray(variant, dtype=np.float64)
    if b.shape != v.shape or b.ndim != 1 or b.size == 0:
        raise ValueError(f"need two equal-length 1-D outcome vectors, got {b.shape} and "
                         f"{v.shape}")
    if not b.sum():
        raise ValueError("the base has no hits: a relative change is undefined")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, b.size, size=(rounds, b.size))
    sb, sv = b[idx].sum(axis=1), v[idx].sum(axis=1)
    ok = sb > 0
    ratios = sv[ok] / sb[ok] - 1.0
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return PairedChange(change=float(v.sum() / b.sum() - 1.0), low=float(low),
                        high=float(high), gained=int(((v > 0) & (b == 0)).sum()),
                        lost=int(((b > 0) & (v == 0)).sum()))
