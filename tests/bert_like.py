"""Shared test helper: a BERT-shaped encoder built with onnx.helper (no torch in CI).

It has what breaks naive random checks on real `transformers` exports: int64
input_ids / attention_mask / token_type_ids with symbolic `batch` and `sequence`,
a 2-row token-type table (ids 2 and 3 are out of bounds), a position table of
`max_positions` rows gathered through Shape -> Gather -> Range, the additive mask
(1 - mask) * -10000 on the attention scores, LayerNormalization, a ReLU FFN and a
tanh pooler on the first token.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN, FFN, VOCAB, TYPES = 16, 32, 50, 2


def bert_like(max_positions: int = 40, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []

    def init(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(name: str, *shape: int) -> str:
        return init(name, (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32))

    def vec(name: str, n: int, mean: float = 0.0) -> str:
        return init(name, (mean + 0.1 * rng.standard_normal(n)).astype(np.float32))

    nodes = []

    def node(op: str, inputs: list[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    i64 = lambda name, v: init(name, np.array(v, np.int64))  # noqa: E731
    f32 = lambda name, v: init(name, np.array(v, np.float32))  # noqa: E731
    word = node("Gather", [weight("word_emb", VOCAB, HIDDEN), "input_ids"], "word")
    types = node("Gather", [weight("type_emb", TYPES, HIDDEN), "token_type_ids"], "types")
    shape = node("Shape", ["input_ids"], "ids_shape")
    seq = node("Gather", [shape, i64("one", 1)], "seq_len", axis=0)
    positions = node("Range", [i64("zero", 0), seq, i64("step", 1)], "positions")
    pos = node("Gather", [weight("pos_emb", max_positions, HIDDEN), positions], "pos")
    emb = node("Add", [node("Add", [word, types], "emb0"), pos], "emb1")
    h = node("LayerNormalization", [emb, vec("ln0.g", HIDDEN, 1.0), vec("ln0.b", HIDDEN)],
             "h0", axis=-1)
    q = node("MatMul", [h, weight("wq", HIDDEN, HIDDEN)], "q")
    k = node("MatMul", [h, weight("wk", HIDDEN, HIDDEN)], "k")
    v = node("MatMul", [h, weight("wv", HIDDEN, HIDDEN)], "v")
    kt = node("Transpose", [k], "kt", perm=[0, 2, 1])
    scores = node("Mul", [node("MatMul", [q, kt], "qk"), f32("scale", 0.25)], "scores")
    mask = node("Cast", [node("Unsqueeze", ["attention_mask", i64("ax1", [1])], "mask3")],
                "maskf", to=TensorProto.FLOAT)
    additive = node("Mul", [node("Sub", [f32("one_f", 1.0), mask], "inv"),
                            f32("neg", -10000.0)], "additive")
    probs = node("Softmax", [node("Add", [scores, additive], "masked")], "probs", axis=-1)
    ctx = node("MatMul", [probs, v], "ctx")
    attn = node("Add", [node("MatMul", [ctx, weight("wo", HIDDEN, HIDDEN)], "attn0"),
                        vec("bo", HIDDEN)], "attn")
    h1 = node("LayerNormalization", [node("Add", [h, attn], "res1"), vec("ln1.g", HIDDEN, 1.0),
                                     vec("ln1.b", HIDDEN)], "h1", axis=-1)
    up = node("Add", [node("MatMul", [h1, weight("w1", HIDDEN, FFN)], "up0"), vec("b1", FFN)],
              "up")
    down = node("Add", [node("MatMul", [node("Relu", [up], "act"), weight("w2", FFN, HIDDEN)],
                             "down0"), vec("b2", HIDDEN)], "down")
    out = node("LayerNormalization", [node("Add", [h1, down], "res2"), vec("ln2.g", HIDDEN, 1.0),
                                      vec("ln2.b", HIDDEN)], "last_hidden_state", axis=-1)
    first = node("Gather", [out, i64("first", 0)], "cls", axis=1)
    node("Tanh", [node("Gemm", [first, weight("wp", HIDDEN, HIDDEN), vec("bp", HIDDEN)],
                       "pool0")], "pooler_output")
    ids = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
           for n in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                      ["batch", "sequence", HIDDEN]),
        helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, ["batch", HIDDEN]),
    ]
    graph = helper.make_graph(nodes, "bert_like", ids, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model
