"""Whole attention heads of decoder-only transformers (issue 14): GPT-2 and LLaMA.

The fixtures are the real `transformers` exports of `tests/fixtures/real/` (random,
seeded weights), from both torch exporters (`dynamo=True` and TorchScript). What
used to block the heads, and what each test proves:

- GPT-2: the causal mask `bias[:, :, :S, :S]` (a Slice with bounds from `Shape`,
  whose dims onnx's inference loses) broadcast over the heads of the scores, and
  the fused `c_attn` (one Gemm, Split into Q, K, V). A unit is one head: its
  head_dim columns of each of Q, K and V and the matching rows of `c_proj`.
- LLaMA: rotary embeddings (cos/sin `[B, 1, S, D]` broadcast over the heads;
  rotate_half slices inside head_dim) and grouped-query attention (repeat_kv's
  Unsqueeze -> Expand -> Reshape): a unit is one K/V head with every Q head that
  reads it, and the matching rows of `o_proj`. SwiGLU gate and up are one group.

Every prune is checked against the masked oracle, also at batch/sequence sizes
other than the ones the default check uses; the kept weight columns are compared
with the original ones to show whole heads went, in the same places everywhere.
The report says how many heads and neurons each block keeps, and warns (report and
log) when the MACs removed fall far short of the request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import sympy
from oracle import TOLERANCE, prune_and_check
from test_channel_ops import Net, inp, kept_indices, row

from compress_ir.api import compress
from compress_ir.core import numeric
from compress_ir.core.report import format_report
from compress_ir.frontends.onnx import load_onnx
from compress_ir.frontends.placeholders import fill_placeholders
from compress_ir.passes.analysis.channel_groups import ChannelAnalysis, analyse_channels
from compress_ir.passes.analysis.prune_summary import shortfall
from compress_ir.passes.analysis.static_dims import static_dim, sym_dim
from compress_ir.report_html import render_html

REAL = Path(__file__).parent / "fixtures" / "real"
PRUNE = "channel-prune{ratio=0.5}"


@dataclass(frozen=True)
class Block:
    """Node names of the first attention block of a fixture (they differ per exporter)."""

    q: str  # the fused QKV Gemm for GPT-2
    o: str
    k: str = ""
    v: str = ""
    gate: str = ""
    up: str = ""


_TS_ATTN, _TS_LAYER = "/model/model/layers.0/self_attn/", "/model/model/layers.0/mlp/"
GPT2 = {  # dynamo=True and TorchScript (dynamo=False) exports of the same model
    "gpt2": Block(q="node_addmm", o="node_addmm_1"),
    "gpt2_ts": Block(q="/model/transformer/h.0/attn/c_attn/Gemm",
                     o="/model/transformer/h.0/attn/c_proj/Gemm"),
}
LLAMA = {
    "llama": Block(q="node_linear", k="node_linear_1", v="node_linear_2", o="node_linear_3",
                   gate="node_linear_4", up="node_linear_5"),
    "llama_ts": Block(q=f"{_TS_ATTN}q_proj/MatMul", k=f"{_TS_ATTN}k_proj/MatMul",
                      v=f"{_TS_ATTN}v_proj/MatMul", o=f"{_TS_ATTN}o_proj/MatMul",
                      gate=f"{_TS_LAYER}gate_proj/MatMul", up=f"{_TS_LAYER}up_proj/MatMul"),
}
HEADS, KV_HEADS, HEAD_DIM, HIDDEN = 4, 2, 8, 32  # both fixtures (tools/make_real_corpus.py)


def _load(name: str) -> onnx.ModelProto:
    return fill_placeholders(onnx.load(REAL / f"{name}.onnx"), seed=0)


def _group_of(analysis: ChannelAnalysis, node: str):
    return next(g for g in analysis.groups if any(r.node == node for r in g.roots))


def _unit_positions(analysis: ChannelAnalysis, group) -> list[dict[str, list[int]]]:
    """Per unit: producer node -> its output positions in the unit."""
    out = []
    for unit in group.units:
        members: dict[str, list[int]] = {}
        for root, positions in group.members[int(unit)]:
            members[analysis.roots[root].node] = positions.tolist()
        out.append(members)
    return out


def _cols(heads: list[int], offset: int = 0) -> list[int]:
    return [offset + h * HEAD_DIM + j for h in heads for j in range(HEAD_DIM)]


def _agree(outcome, batch: int, seq: int) -> None:
    """Pruned model and masked oracle agree at another batch/sequence size (real tokens)."""
    rng = np.random.default_rng(batch * 100 + seq)
    feeds = {"input_ids": rng.integers(0, 90, (batch, seq)).astype(np.int64),
             "attention_mask": np.ones((batch, seq), np.int64)}
    feeds["attention_mask"][0, seq - 2:] = 0  # a padded row
    got = numeric.session(outcome.pruned).run(None, feeds)[0]
    want = numeric.session(outcome.result.reference).run(None, feeds)[0]
    orig = numeric.session(outcome.original).run(None, feeds)[0]
    assert got.shape == want.shape == (batch, seq, 96)
    assert np.abs(got - want).max() <= TOLERANCE * max(1.0, float(np.abs(want).max()))
    assert np.abs(got - orig).max() > 1e-2  # heads really went: not the unpruned model


@pytest.mark.parametrize("name", list(GPT2))
def test_gpt2_fused_qkv_heads_through_the_causal_mask(name: str) -> None:
    block = GPT2[name]
    proto = _load(name)
    analysis = analyse_channels(load_onnx(proto))
    group = _group_of(analysis, block.q)
    assert group.prunable, group.blocked
    units = _unit_positions(analysis, group)
    assert len(units) == HEADS
    for h, members in enumerate(sorted(units, key=lambda m: m[block.q][0])):
        # one head: its head_dim columns of Q, of K and of V in the one c_attn weight
        assert members == {block.q: _cols([h]) + _cols([h], HIDDEN) + _cols([h], 2 * HIDDEN)}
    out = prune_and_check(proto, PRUNE)
    assert row(out, block.q)["status"] == "pruned" and row(out, block.q)["kept"] == 2
    kept = kept_indices(inp(out.original, block.q), inp(out.pruned, block.q), axis=1)
    heads = sorted({c // HEAD_DIM for c in kept if c < HIDDEN})
    assert len(heads) == 2
    assert kept == _cols(heads) + _cols(heads, HIDDEN) + _cols(heads, 2 * HIDDEN)
    assert kept_indices(inp(out.original, block.o), inp(out.pruned, block.o)) == _cols(heads)
    for batch, seq in ((2, 7), (1, 1), (3, 12)):
        _agree(out, batch, seq)


@pytest.mark.parametrize("name", list(LLAMA))
def test_llama_gqa_rope_heads(name: str) -> None:
    block = LLAMA[name]
    proto = _load(name)
    analysis = analyse_channels(load_onnx(proto))
    group = _group_of(analysis, block.q)
    assert group.prunable, group.blocked
    assert {r.node for r in group.roots} == {block.q, block.k, block.v}
    rep = HEADS // KV_HEADS
    units = sorted(_unit_positions(analysis, group), key=lambda m: m[block.k][0])
    assert len(units) == KV_HEADS  # a unit is a K/V head and the Q heads sharing it
    for g, members in enumerate(units):
        assert members == {block.q: _cols(list(range(g * rep, g * rep + rep))),
                           block.k: _cols([g]), block.v: _cols([g])}
    ffn = _group_of(analysis, block.gate)  # SwiGLU: gate and up pruned together
    assert {r.node for r in ffn.roots} == {block.gate, block.up} and ffn.prunable
    out = prune_and_check(proto, PRUNE)
    assert row(out, block.q)["kept"] == 1
    k_kept = kept_indices(inp(out.original, block.k), inp(out.pruned, block.k), axis=1)
    (g,) = {c // HEAD_DIM for c in k_kept}
    q_heads = list(range(g * rep, g * rep + rep))
    assert k_kept == _cols([g])
    assert kept_indices(inp(out.original, block.v), inp(out.pruned, block.v), axis=1) == _cols([g])
    assert kept_indices(inp(out.original, block.q), inp(out.pruned, block.q),
                        axis=1) == _cols(q_heads)
    assert kept_indices(inp(out.original, block.o), inp(out.pruned, block.o)) == _cols(q_heads)
    for batch, seq in ((2, 7), (1, 1), (3, 12)):
        _agree(out, batch, seq)


def _causal_attention(mask_over_heads: bool) -> onnx.ModelProto:
    """x[B,S,16] -> qkv(48) -> Split -> 2 heads of 8 -> scores -> Where(mask) -> softmax
    -> P.V -> merge -> proj(5). The mask is `bias[:, :, :S, :S]` with S from Shape, as
    GPT-2 exports it; with `mask_over_heads` it is `[1, 2, 128, 128]`: one mask per head
    (different ones), computed at run time, so the kept head must read its own mask."""
    n = Net(opset=18)
    x = n.input(["B", "S", 16])
    qkv = n.op("MatMul", [x, n.rand((16, 48), "qkv.w")], "qkv")
    q, k, v = n.op("Split", [qkv], "split", outputs=3, axis=2, num_outputs=3)
    shape = n.op("Shape", [x], "shape")
    bs = n.op("Slice", [shape, n.ints([0]), n.ints([2])], "bs")
    s = n.op("Slice", [shape, n.ints([1]), n.ints([2])], "s")
    split = n.op("Concat", [bs, n.ints([2, 8])], "split_shape", axis=0)
    heads = []
    for t, perm in ((q, [0, 2, 1, 3]), (k, [0, 2, 3, 1]), (v, [0, 2, 1, 3])):
        heads.append(n.op("Transpose", [n.op("Reshape", [t, split], f"{t}_heads")],
                          f"{t}_t", perm=perm))
    scores = n.op("MatMul", heads[:2], "scores")
    table = np.tril(np.ones((128, 128), bool))[None, None]  # the check runs at S = 128
    if mask_over_heads:
        table = np.concatenate([table, table[:, :, ::-1]], axis=1)
    bias = n.const(table, "bias")
    mask = n.op("Slice", [n.op("Slice", [bias, n.ints([0]), s, n.ints([2])], "rows"),
                          n.ints([0]), s, n.ints([3])], "mask")
    masked = n.op("Where", [mask, scores, n.const(np.float32(-1e9))], "masked")
    ctx = n.op("MatMul", [n.op("Softmax", [masked], "probs", axis=-1), heads[2]], "ctx")
    merged = n.op("Reshape", [n.op("Transpose", [ctx], "ctx_t", perm=[0, 2, 1, 3]),
                              n.op("Concat", [bs, n.ints([16])], "merge_shape", axis=0)],
                  "merge")
    return n.build(n.op("MatMul", [merged, n.rand((16, 5), "proj.w")], "proj"))


def test_broadcast_mask_dims_are_read_off_the_slice() -> None:
    """onnx's inference loses every dim of the Slice; the two uncut axes are still 1."""
    model = load_onnx(_causal_attention(False))
    analysis = analyse_channels(model)
    mask = model.graph.tensors()["mask"]
    assert [static_dim(analysis, mask, axis) for axis in range(4)] == [1, 1, None, None]
    scores = model.graph.tensors()["scores"]
    assert [str(sym_dim(analysis, scores, axis)) for axis in (2, 3)] == ["S", "S"]
    # the masked scores' rows are min(128, S) (the Slice) broadcast with S: not provable
    assert sym_dim(analysis, model.graph.tensors()["masked"], 2) is None


@pytest.mark.parametrize("mask_over_heads", [False, True])
def test_causal_mask_broadcast_over_heads(mask_over_heads: bool) -> None:
    proto = _causal_attention(mask_over_heads)
    out = prune_and_check(proto, PRUNE)
    gathers = [n for n in out.pruned.graph.node if n.op_type == "Gather"]
    if mask_over_heads:  # the per-head mask is read at the kept head (ALiBi-style bias)
        assert [(n.input[0], n.output[0] in {i for m in out.pruned.graph.node
                                              if m.name == "masked" for i in m.input})
                for n in gathers] == [("mask", True)]
    else:
        assert not gathers  # a mask broadcast over the heads needs nothing
    kept = kept_indices(inp(out.original, "qkv"), inp(out.pruned, "qkv"), axis=1)
    (h,) = {c // 8 for c in kept if c < 16}
    # head 1 reads the reversed mask: a Gather of the wrong head would fail the oracle below
    assert h == 1 or not mask_over_heads
    assert kept == [c + off for off in (0, 16, 32) for c in range(8 * h, 8 * h + 8)]
    rng = np.random.default_rng(0)
    for shape in ((2, 5, 16), (1, 8, 16)):
        x = rng.standard_normal(shape).astype(np.float32)
        got = numeric.session(out.pruned).run(None, {"x": x})[0]
        want = numeric.session(out.result.reference).run(None, {"x": x})[0]
        assert np.abs(got - want).max() <= TOLERANCE * max(1.0, float(np.abs(want).max()))


# -- the report: heads and neurons per block, and a warning when the request falls short --
def test_report_counts_heads_and_neurons_per_block() -> None:
    result = compress(_load("llama_ts"), PRUNE, check=True)
    details = result.report["passes"][0]["details"]
    rows = {r["producers"][0]: r for r in details["groups"]}
    attn = rows[LLAMA["llama_ts"].q]
    assert (attn["unit"], attn["heads"], attn["heads_kept"], attn["kv_heads"],
            attn["kv_heads_kept"], attn["head_dim"]) == ("kv-group", 4, 2, 2, 1, HEAD_DIM)
    ffn = rows[LLAMA["llama_ts"].gate]
    assert (ffn["unit"], ffn["size"], ffn["kept"]) == ("neuron", 64, 32)
    assert details["kept"] == {"heads": [4, 8], "neurons": [64, 128]}
    assert "warnings" not in details  # 0.5 asked, ~0.46 of the MACs removed
    text = format_report(result.report)
    assert "[q heads 2/4, kv heads 1/2 (head_dim 8)]" in text and "[neurons 32/64]" in text
    assert "kept: heads 4/8, neurons 64/128" in text
    assert "q heads 2/4, kv heads 1/2 (head_dim 8)" in render_html(result.report)
    gpt2 = compress(_load("gpt2"), PRUNE, check=True).report["passes"][0]["details"]
    (head,) = [r for r in gpt2["groups"] if r["producers"] == [GPT2["gpt2"].q]]
    assert (head["unit"], head["heads"], head["heads_kept"]) == ("head", HEADS, 2)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_shortfall_is_a_warning_that_names_the_blocked_groups() -> None:
    """ratio 0.5 with the attention blocks excluded removes ~15 % of the MACs."""
    # on the pass's own logger: a CLI test may have configured `compress_ir` (no propagation)
    logger, records = logging.getLogger("compress_ir.channel_prune"), _Records()
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.WARNING)
    try:
        result = compress(_load("gpt2_ts"), "channel-prune{ratio=0.5,exclude=[*attn*]}",
                          check=True)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    details = result.report["passes"][0]["details"]
    found = details["shortfall"]
    assert found["requested"] == 0.5
    assert found["achieved"] == pytest.approx(1 - result.report["ratios"]["macs"], abs=1e-3)
    assert found["achieved"] < 0.2
    assert found["held_by"][0]["reason"] == "excluded by the exclude option"
    assert found["held_by"][0]["groups"] == 2
    (warning,) = details["warnings"]
    assert warning.startswith("channel-prune: ratio=0.5 asks for about 50% fewer MACs, got ")
    assert [m for m in records.messages if "fewer MACs" in m] == [warning]
    assert f"warning: {warning}" in format_report(result.report)
    assert 'class="warn"' in render_html(result.report)


def test_shortfall_counts_the_macs_of_the_groups_left_whole() -> None:
    before = {"a": {"macs": 300}, "b": {"macs": 100}, "c": {"macs": 600}}
    after = {"a": {"macs": 150}, "b": {"macs": 100}, "c": {"macs": 600}}
    rows = [{"producers": ["a"], "status": "pruned", "size": 8, "kept": 4},
            {"producers": ["b"], "status": "blocked", "size": 4, "kept": 4,
             "blocked_by": ["Add node 'x': residual"]},
            {"producers": ["c"], "status": "blocked", "size": 4, "kept": 4,
             "blocked_by": ["graph output 'y' must keep its shape"]}]
    found = shortfall(0.3, before, after, rows, "ratio=0.3")
    assert found["achieved"] == pytest.approx(0.15)  # 150 of 1000 MACs
    assert [(h["reason"], h["macs_fraction"]) for h in found["held_by"]] == [
        ("graph output 'y' must keep its shape", 0.6), ("Add node 'x': residual", 0.1)]
    assert found["held_macs_fraction"] == pytest.approx(0.7)
    assert shortfall(0.2, before, after, rows, "ratio=0.2") is None  # 0.15 >= 2/3 * 0.2
    nothing = shortfall(0.3, before, None, rows, "ratio=0.3")
    assert nothing["achieved"] == 0.0


def test_torchscript_expand_minus_one_shape_is_followed() -> None:
    """TorchScript writes `mask.expand(B, -1, -1, -1)` as Where(shape == -1, ones, shape)
    with ones = ConstantOfShape(Shape(shape)); B is a positive dim, so B == -1 is False
    and the shape is [B, 1, 1, 1]: the expanded mask is still 1 on the heads axis."""
    n = Net()
    x = n.input(["B", "S", 16])
    batch = n.op("Slice", [n.op("Shape", [x], "shape"), n.ints([0]), n.ints([1])], "batch")
    want = n.op("Concat", [batch, n.ints([-1, -1, -1])], "want", axis=0)
    ones = n.op("ConstantOfShape", [n.op("Shape", [want], "want_shape")], "ones",
                value=onnx.helper.make_tensor("one", onnx.TensorProto.INT64, [1], [1]))
    is_free = n.op("Equal", [want, n.op("Mul", [ones, n.ints([-1])], "minus")], "is_free")
    shape = n.op("Where", [is_free, ones, want], "expand_shape")
    mask = n.op("Expand", [n.const(np.ones((1, 1, 4, 4), np.float32)), shape], "mask")
    out = n.op("Relu", [mask], "out")
    model = load_onnx(n.build(out, shapes={"out": ["B", 1, 4, 4]}))
    analysis = analyse_channels(model)
    values = analysis.sym.values
    assert [str(e) for e in values["ones"].elems] == ["1"] * 4
    assert [str(e) for e in values["is_free"].elems] == ["0", "1", "1", "1"]
    assert [str(e) for e in values["expand_shape"].elems] == ["B", "1", "1", "1"]
    tensors = model.graph.tensors()
    assert model.shape(tensors["mask"])[1] != 1  # onnx's inference cannot tell
    assert [str(sym_dim(analysis, tensors["mask"], axis)) for axis in range(4)] == [
        "B", "1", "4", "4"]


@pytest.mark.parametrize("pipeline", ["channel-prune{ratio=0.5,round-to=8}",
                                      "channel-prune{target-macs=0.5,round-to=8}"])
def test_round_to_counts_channels_not_heads(pipeline: str) -> None:
    """round-to (the target's vector width) keeps channel counts multiples of 8: a head of
    head_dim 8 already is one, so 2 KV groups can become 1 (the head count is not rounded
    up to 8, which would keep every head); FFN neurons are rounded to 8."""
    out = prune_and_check(_load("llama"), pipeline)
    rows = {r["producers"][0]: r for r in out.result.details["groups"]}
    assert rows[LLAMA["llama"].q]["kept"] == 1
    ffn = rows[LLAMA["llama"].gate]
    assert ffn["kept"] < ffn["size"] and ffn["kept"] % 8 == 0
    k_w = inp(out.pruned, LLAMA["llama"].k)
    assert k_w.shape[1] == HEAD_DIM


def test_unit_multiples() -> None:
    """k units of c channels: k a multiple of round_to / gcd(round_to, c) in every producer."""
    from compress_ir.passes.analysis.channel_groups import ChannelGroup
    from compress_ir.passes.transform.channel_prune import unit_multiples

    def group(index: int, per_unit: dict[int, int]) -> ChannelGroup:
        members = {u: [(root, np.arange(c)) for root, c in per_unit.items()] for u in range(4)}
        return ChannelGroup(index, [], np.arange(4), members)

    groups = [group(0, {0: 1}), group(1, {0: 24}), group(2, {0: 16, 1: 8, 2: 8}),
              group(3, {0: 4}), group(4, {0: 12, 1: 2})]
    assert unit_multiples(groups, 8) == {1: 1, 2: 1, 3: 2, 4: 4}
    assert unit_multiples(groups, 1) == {}


# -- ALiBi: a per-head bias computed at run time (MPT) -------------------------------------
_MPT_TS = "/model/transformer/blocks.{}/attn/"
MPT = {  # per block: (fused Wqkv, out_proj)
    "mpt": [("node_linear", "node_linear_1"), ("node_linear_4", "node_linear_5")],
    "mpt_ts": [(f"{_MPT_TS.format(b)}Wqkv/MatMul", f"{_MPT_TS.format(b)}out_proj/MatMul")
               for b in (0, 1)],
}


@pytest.mark.parametrize("name", list(MPT))
def test_mpt_alibi_heads_read_their_own_bias(name: str) -> None:
    """MPT adds `alibi[:, :, -S:]` (a `[heads, 1, 128]` table sliced to the sequence at run
    time, shared by every block) to the scores. Each block reads it at its kept heads
    through a Gather (`gather-input`): the table itself is never changed under the other
    block, and the oracle holds at other batch/sequence sizes (the slice moves with S).
    The dynamo export slices with bounds `[max(0, 128 - S), END)`: its length min(128, S)
    broadcast with the scores' S is S (`static_dims`), so the merge `[B, S, -1]` is
    provably heads x head_dim."""
    out = prune_and_check(_load(name), PRUNE)
    for qkv, out_proj in MPT[name]:
        assert row(out, qkv)["status"] == "pruned" and row(out, qkv)["heads_kept"] == 2
        kept = kept_indices(inp(out.original, qkv), inp(out.pruned, qkv), axis=1)
        heads = sorted({c // HEAD_DIM for c in kept if c < HIDDEN})
        assert kept == [off + c for off in (0, HIDDEN, 2 * HIDDEN) for c in _cols(heads)]
        assert kept_indices(inp(out.original, out_proj), inp(out.pruned, out_proj)) == \
            _cols(heads)
    gathers = [n for n in out.pruned.graph.node if n.op_type == "Gather"
               and n.name.endswith("_gather")]
    assert len(gathers) == 2  # one per block, on the sliced ALiBi bias
    for batch, seq in ((2, 7), (1, 1), (3, 12)):
        _agree(out, batch, seq)


def test_broadcast_with_the_last_n_positions_is_exact_only_for_literal_n() -> None:
    """`S` with `min(S, 128)` is S in every run onnxruntime accepts; min(S, c) for c < 2, or
    min(T, 128) of another symbol, it is not provable (unknown, never a guess)."""
    from compress_ir.passes.analysis.static_dims import broadcast

    s, t = (sympy.Symbol(n, integer=True, positive=True) for n in ("sequence", "T"))
    assert broadcast([s, sympy.Min(s, 128)]) == s
    assert broadcast([sympy.Min(s, 128), 1, s]) == s
    assert broadcast([s, sympy.Min(s, 1, evaluate=False)]) is None  # c < 2: not covered, unknown
    assert broadcast([s, sympy.Min(s, t)]) is None
    assert broadcast([s, sympy.Min(t, 128)]) is None
    assert broadcast([s, None]) is None
