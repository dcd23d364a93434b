"""A synthetic LLaMA-style decoder (RMSNorm, RoPE, GQA, SwiGLU) with random weights.

Built with onnx.helper and written with external data tensor by tensor, so a 1B
model (TinyLlama shape) can be generated without torch and without holding all
weights in memory. Used by tests/test_stream.py and tools/bench_llm_stream.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compress_ir.stream.external import TensorWriter

OPSET = 18


@dataclass(frozen=True)
class LlamaShape:
    layers: int = 22
    hidden: int = 2048
    heads: int = 32
    kv_heads: int = 4
    ffn: int = 5632
    vocab: int = 32000
    seq: int = 16  # fixed sequence length (RoPE tables and causal mask are constants)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def params(self) -> int:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * self.ffn + 2 * h
        return self.layers * per_layer + 2 * self.vocab * h + h


TINYLLAMA = LlamaShape()


class _Graph:
    def __init__(self, writer: TensorWriter | None, rng: np.random.Generator) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.writer, self.rng, self.count = writer, rng, 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def node(self, op: str, inputs: list[str], name: str | None = None, **attrs) -> str:
        out = name or self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], scale: float) -> str:
        """A random float32 weight, written to external data straight away if streaming."""
        value = (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))
        if self.writer is None:
            return self.const(name, value)
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        self.writer.write(tensor, value)
        self.inits.append(tensor)
        return name


def _rms_norm(g: _Graph, x: str, prefix: str, hidden: int) -> str:
    sq = g.node("Mul", [x, x])
    mean = g.node("ReduceMean", [sq, "axes_last"], keepdims=1)
    std = g.node("Sqrt", [g.node("Add", [mean, "eps"])])
    gamma = g.weight(f"{prefix}.weight", (hidden,), 0.1)
    return g.node("Mul", [g.node("Div", [x, std]), g.node("Add", [gamma, "one"])])


def _rope(g: _Graph, x: str) -> str:
    """x [1, heads, S, D] -> x*cos + rotate_half(x)*sin."""
    x1 = g.node("Slice", [x, "zero1", "half", "axes_last"])
    x2 = g.node("Slice", [x, "half", "big", "axes_last"])
    rot = g.node("Concat", [g.node("Neg", [x2]), x1], axis=-1)
    return g.node("Add", [g.node("Mul", [x, "rope_cos"]), g.node("Mul", [rot, "rope_sin"])])


def _attention(g: _Graph, x: str, p: str, s: LlamaShape) -> str:
    d, kv = s.head_dim, s.kv_heads * s.head_dim
    scale = 1.0 / np.sqrt(s.hidden)
    q = g.node("MatMul", [x, g.weight(f"{p}.q_proj", (s.hidden, s.hidden), scale)], f"{p}.q")
    k = g.node("MatMul", [x, g.weight(f"{p}.k_proj", (s.hidden, kv), scale)], f"{p}.k")
    v = g.node("MatMul", [x, g.weight(f"{p}.v_proj", (s.hidden, kv), scale)], f"{p}.v")

    def heads(t: str, n: str) -> str:
        return g.node("Transpose", [g.node("Reshape", [t, n])], perm=[0, 2, 1, 3])

    q = _rope(g, heads(q, "shape_q"))
    k = _rope(g, heads(k, "shape_kv"))
    v = heads(v, "shape_kv")
    group = s.heads // s.kv_heads

    def repeat(t: str) -> str:  # GQA: each KV head serves `group` query heads
        t = g.node("Unsqueeze", [t, "axis2"])
        t = g.node("Expand", [t, g.const(g.name("expand"), np.array(
            [1, s.kv_heads, group, s.seq, d], np.int64))])
        return g.node("Reshape", [t, "shape_heads"])

    k, v = repeat(k), repeat(v)
    att = g.node("MatMul", [q, g.node("Transpose", [k], perm=[0, 1, 3, 2])])
    att = g.node("Add", [g.node("Mul", [att, "att_scale"]), "causal"])
    out = g.node("MatMul", [g.node("Softmax", [att], axis=-1), v])
    out = g.node("Reshape", [g.node("Transpose", [out], perm=[0, 2, 1, 3]), "shape_hidden"])
    return g.node("MatMul", [out, g.weight(f"{p}.o_proj", (s.hidden, s.hidden), scale)],
                  f"{p}.o")


def _mlp(g: _Graph, x: str, p: str, s: LlamaShape) -> str:
    scale = 1.0 / np.sqrt(s.hidden)
    gate = g.node("MatMul", [x, g.weight(f"{p}.gate_proj", (s.hidden, s.ffn), scale)],
                  f"{p}.gate")
    up = g.node("MatMul", [x, g.weight(f"{p}.up_proj", (s.hidden, s.ffn), scale)], f"{p}.up")
    act = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])]), up])
    return g.node("MatMul", [act, g.weight(f"{p}.down_proj", (s.ffn, s.hidden),
                                           1.0 / np.sqrt(s.ffn))], f"{p}.down")


def _constants(g: _Graph, s: LlamaShape) -> None:
    d = s.head_dim
    inv = 1.0 / (10000.0 ** (np.arange(0, d, 2, dtype=np.float64) / d))
    ang = np.arange(s.seq)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], axis=1)
    g.const("rope_cos", np.cos(ang).astype(np.float32))
    g.const("rope_sin", np.sin(ang).astype(np.float32))
    g.const("causal", np.triu(np.full((s.seq, s.seq), -1e9, np.float32), 1))
    g.const("att_scale", np.array(1.0 / np.sqrt(d), np.float32))
    g.const("eps", np.array(1e-5, np.float32))
    g.const("one", np.array(1.0, np.float32))
    g.const("axes_last", np.array([-1], np.int64))
    g.const("axis2", np.array([2], np.int64))
    g.const("zero1", np.array([0], np.int64))
    g.const("half", np.array([d // 2], np.int64))
    g.const("big", np.array([d], np.int64))
    g.const("shape_q", np.array([1, s.seq, s.heads, d], np.int64))
    g.const("shape_kv", np.array([1, s.seq, s.kv_heads, d], np.int64))
    g.const("shape_heads", np.array([1, s.heads, s.seq, d], np.int64))
    g.const("shape_hidden", np.array([1, s.seq, s.hidden], np.int64))


def build(shape: LlamaShape, out_path: str | os.PathLike | None = None,
          seed: int = 0) -> onnx.ModelProto:
    """The decoder; with `out_path` its weights are streamed to `<out>.data` and the
    model is saved there (returned proto has external references only)."""
    writer = TensorWriter(out_path) if out_path is not None else None
    g = _Graph(writer, np.random.default_rng(seed))
    _constants(g, shape)
    embed = g.weight("embed_tokens", (shape.vocab, shape.hidden), 0.02)
    x = g.node("Gather", [embed, "input_ids"], "embed")
    for i in range(shape.layers):
        p = f"layers.{i}"
        h = _attention(g, _rms_norm(g, x, f"{p}.input_layernorm", shape.hidden), f"{p}.attn",
                       shape)
        x = g.node("Add", [x, h], f"{p}.residual_attn")
        h = _mlp(g, _rms_norm(g, x, f"{p}.post_attention_layernorm", shape.hidden),
                 f"{p}.mlp", shape)
        x = g.node("Add", [x, h], f"{p}.residual_mlp")
    x = _rms_norm(g, x, "norm", shape.hidden)
    logits = g.node("MatMul", [x, g.weight("lm_head", (shape.hidden, shape.vocab),
                                           1.0 / np.sqrt(shape.hidden))], "logits")
    graph = helper.make_graph(
        g.nodes, "llama_like",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, shape.seq])],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT,
                                       [1, shape.seq, shape.vocab])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    if writer is not None:
        writer.commit(model)
    return model
