"""`tools/paired_stats.py`: the paired bootstrap of a relative change on shared items."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import paired_stats as ps  # noqa: E402


def test_identical_outcomes_have_a_zero_width_interval() -> None:
    hits = np.random.default_rng(1).random(400) < 0.45
    got = ps.paired_change(hits, hits)
    assert (got.change, got.low, got.high, got.gained, got.lost) == (0.0, 0.0, 0.0, 0, 0)


def test_change_and_discordant_counts_are_counted_by_hand() -> None:
    base = np.array([1] * 40 + [0] * 60)
    variant = base.copy()
    variant[:6] = 0  # lost 6 of 40 hits
    variant[90:92] = 1  # gained 2
    got = ps.paired_change(base, variant)
    assert got.change == pytest.approx(36 / 40 - 1)
    assert (got.gained, got.lost) == (2, 6)
    # 6 lost vs 2 gained is too few disagreements to call a loss (McNemar p ~ 0.3)
    assert got.low < got.change < 0.0 < got.high


def test_pairing_narrows_the_interval_against_unpaired_resampling() -> None:
    """Highly correlated outcomes: the paired interval must be much narrower than the one
    from resampling base and variant independently (what two separate standard errors
    amount to)."""
    rng = np.random.default_rng(0)
    base = rng.random(500) < 0.45
    variant = base.copy()
    flip = rng.choice(np.flatnonzero(base), 12, replace=False)
    variant[flip] = False
    paired = ps.paired_change(base, variant)
    i, j = rng.integers(0, 500, (2, 4000, 500))
    unpaired = variant[j].mean(1) / base[i].mean(1) - 1
    lo, hi = np.percentile(unpaired, [2.5, 97.5])
    assert (paired.high - paired.low) < 0.5 * (hi - lo)
    assert paired.high < 0.0 < hi  # only the paired view resolves the loss


def test_interval_covers_the_true_change_in_most_simulations() -> None:
    """Coverage: items drawn from a known joint distribution (true relative change -4 %)."""
    rng = np.random.default_rng(3)
    covered = 0
    for trial in range(40):
        base = rng.random(500) < 0.5
        variant = base & (rng.random(500) >= 0.08)  # lose 8 % of hits
        variant |= ~base & (rng.random(500) < 0.04)  # gain 4 % of the misses (ratio +4 %)
        got = ps.paired_change(base, variant, rounds=2000, seed=trial)
        covered += got.low <= -0.04 <= got.high
    assert covered >= 33  # 95 % nominal; 40 trials


def test_hits_round_trip_and_bad_input() -> None:
    hits = np.array([True, False, True, True])
    assert ps.encode_hits(hits) == "1011"
    assert ps.decode_hits("1011").tolist() == hits.tolist()
    with pytest.raises(ValueError, match="equal-length"):
        ps.paired_change(hits, hits[:3])
    with pytest.raises(ValueError, match="no hits"):
        ps.paired_change(np.zeros(4), hits)
    assert ps.paired_change(np.array([1, 0]), np.array([1, 1]), rounds=50).text().startswith(
        "+100.0 % [")
