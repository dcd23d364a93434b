"""What channel-prune removed, in the model's own terms, and whether it fell short.

Why: a group's "size 4, kept 2" says little about a transformer. The report names
the unit -- attention heads (with grouped-query attention: K/V heads and the Q heads
that share them), FFN neurons (MatMul/Gemm outputs) or conv channels -- and how many
of them each block keeps. And a request that the structure cannot honour (the
residual stream, blocked heads) used to shrink silently: asking for 30 % fewer MACs
gave 15 % with no word; `shortfall` says so, and which blocked groups hold the MACs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from compress_ir.passes.analysis.channel_groups import ChannelAnalysis

FAR_BELOW = 2 / 3  # warn when the achieved MAC reduction is under this share of the request
_NEURON_OPS = {"Gemm", "MatMul"}
_LEFT_WHOLE = {"excluded": "excluded by the exclude option"}
_KEPT_WHOLE = "nothing removed (min-channels, or round-to: by default the target's vector width)"


def unit_rows(analysis: ChannelAnalysis, rows: list[dict[str, Any]], removed: set[int]) -> None:
    """Add `unit` (head | kv-group | neuron | channel) and head counts to each group row.

    A head group is one whose units are whole heads of a `[heads, head_dim]` split
    (`ChannelAnalysis.head_splits` carrying the heads axis). With grouped-query
    attention the Q split has more heads than units: a unit is one K/V head with
    its Q heads (`kv-group`), and both counts are given.
    """
    unit_group = {int(u): g.index for g in analysis.groups for u in g.units}
    splits: dict[int, list[tuple[list[int], int]]] = defaultdict(list)
    for h in analysis.head_splits:
        if len(h.axes) != 2 or h.carried != h.axes[0] or h.table.ndim != 2:
            continue  # head_dim positions carried, not whole heads
        units = [int(analysis.unit_of[int(e)]) for e in h.table[:, 0]]
        group = unit_group.get(units[0])
        if group is not None:
            splits[group].append((units, int(h.table.shape[1])))
    by_index = {g.index: g for g in analysis.groups}
    for row in rows:
        group = by_index[row["group"]]
        heads = splits.get(group.index)
        if heads:
            counts = sorted({len(u) for u, _ in heads})
            q_units = next(u for u, _ in heads if len(u) == counts[-1])
            kv_units = next(u for u, _ in heads if len(u) == counts[0])
            row["unit"] = "head" if counts == [group.size] else "kv-group"
            row["head_dim"] = heads[0][1]
            row["heads"] = len(q_units)
            row["heads_kept"] = sum(u not in removed for u in q_units)
            if row["unit"] == "kv-group":
                row["kv_heads"] = len(kv_units)
                row["kv_heads_kept"] = sum(u not in removed for u in kv_units)
        else:
            ops = {analysis.nodes[r.node].op for r in group.roots if r.kind == "producer"}
            row["unit"] = "neuron" if ops and ops <= _NEURON_OPS else "channel"


def describe(row: dict[str, Any]) -> str:
    """`heads 2/4 (head_dim 8)`, `q heads 2/4, kv heads 1/2 (head_dim 8)`, `neurons 32/64`."""
    unit = row.get("unit")
    if unit == "head":
        return f"heads {row['heads_kept']}/{row['heads']} (head_dim {row['head_dim']})"
    if unit == "kv-group":
        return (f"q heads {row['heads_kept']}/{row['heads']}, kv heads "
                f"{row['kv_heads_kept']}/{row['kv_heads']} (head_dim {row['head_dim']})")
    if unit in ("neuron", "channel"):
        return f"{unit}s {row['kept']}/{row['size']}"
    return ""


def requested_reduction(ratio: float, scope: str, budget: tuple[str, float] | None
                        ) -> float | None:
    """The MAC reduction a request asks for: 1 - target-macs, or the channel ratio
    (removing a fraction r of every group's channels removes at least r of every MAC
    op's work); None where no MAC goal is stated (target-params, sensitivity)."""
    if budget is not None:
        metric, keep = budget
        return 1.0 - keep if metric == "macs" else None
    return ratio if scope in ("uniform", "global") and ratio > 0 else None


def shortfall(requested: float, macs_before: dict[str, dict[str, Any]],
              macs_after: dict[str, dict[str, Any]] | None, rows: list[dict[str, Any]],
              what: str) -> dict[str, Any] | None:
    """A warning when the achieved MAC reduction is far below `requested`, with the
    groups left whole that hold the most MACs and why they were left whole.

    `macs_before`/`macs_after` are `core.metrics.layer_metrics` maps (after: None when
    nothing was removed).
    """
    total = sum(int(v["macs"]) for v in macs_before.values())
    if total <= 0:
        return None
    after = total if macs_after is None else sum(int(v["macs"]) for v in macs_after.values())
    achieved = 1.0 - after / total
    if achieved >= FAR_BELOW * requested:
        return None
    held: dict[str, list] = {}
    for row in rows:
        if row["status"] == "pruned" and row["kept"] < row["size"]:
            continue
        macs = sum(int(macs_before.get(p, {}).get("macs", 0)) for p in row["producers"])
        reason = (row.get("blocked_by") or [row.get("unscored") or _LEFT_WHOLE.get(
            row["status"], _KEPT_WHOLE)])[0]
        entry = held.setdefault(reason, [0, 0])
        entry[0] += 1
        entry[1] += macs
    top = sorted(held.items(), key=lambda kv: -kv[1][1])
    whole = sum(m for _, (_, m) in top)
    because = "; ".join(f"{reason} ({n} group{'s' if n > 1 else ''}, {m / total:.0%} of "
                        "the MACs)" for reason, (n, m) in top[:3] if m)
    message = (f"channel-prune: {what} asks for about {requested:.0%} fewer MACs, got "
               f"{achieved:.0%}: groups left whole hold {whole / total:.0%} of the MACs"
               + (f" -- {because}" if because else ""))
    return {"requested": round(requested, 6), "achieved": round(achieved, 6),
            "held_macs_fraction": round(whole / total, 6),
            "held_by": [{"reason": r, "groups": n, "macs_fraction": round(m / total, 6)}
                        for r, (n, m) in top],
            "message": message}


def totals(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Kept / total: heads over every attention group (a blocked one keeps all), neurons
    and channels over the pruned groups (a blocked one is often the residual stream)."""
    out: dict[str, list[int]] = {}
    for row in rows:
        unit = row.get("unit")
        if unit in ("head", "kv-group"):
            key, kept, size = "heads", row["heads_kept"], row["heads"]
        elif unit in ("neuron", "channel") and row["status"] == "pruned":
            key, kept, size = f"{unit}s", row["kept"], row["size"]
        else:
            continue
        acc = out.setdefault(key, [0, 0])
        acc[0] += int(kept)
        acc[1] += int(size)
    return {k: v for k, v in out.items() if v[1]}

