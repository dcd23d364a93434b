"""The corpus of real exports (issue 9): prune with the check on, MACs at a stated shape, x86.

Fixtures are weight-stripped exports in `tests/fixtures/real/` (see its README and
`tools/make_real_corpus.py`): both torch exporters with dynamic axes, transformers,
timm, a paddle2onnx-style graph. Each gets seeded random weights.

- `test_prune_with_check`: `channel-prune{ratio=0.5}` through `compress()` with the
  numeric check on (default shapes, no flags), the pruned model must match its masked
  oracle, and the prune must remove MACs.
- `test_macs_at_stated_shape`: with the input shape fixed by the user, the report's
  MACs equal a count made here from the shapes onnxruntime actually produces at that
  shape (not from the tool's shape inference).
- `test_dynamic_batch_cnn_same_macs_ratio_as_static`: the acceptance for
  `x.view(x.size(0), -1)`.
- `test_compile_x86`: a cheap subset is built with TVM and verified; the whole corpus
  is compiled by `tools/zoo_table.py --no-light --no-torchvision --compile`.

Cases that fail today are `xfail(strict=True)` with the exact current error, so the
suite is green and a fix that makes one pass is noticed (remove the marker then).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compress_ir.api import compress
from compress_ir.frontends.placeholders import fill_placeholders

REAL = Path(__file__).parent / "fixtures" / "real"
PIPELINE = "channel-prune{ratio=0.5}"
TOLERANCE = 1e-4


SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    name: {k: tuple(v) for k, v in shapes.items()}
    for name, shapes in json.loads((REAL / "input_shapes.json").read_text()).items()
    if not name.startswith("_")
}


@dataclass(frozen=True)
class Case:
    """What fails today for one fixture (None: passes)."""

    prune: str | None = None  # xfail reason of test_prune_with_check
    macs: str | None = None  # xfail reason of test_macs_at_stated_shape


def _tokens(batch: int, seq: int, *names: str) -> dict[str, tuple[int, ...]]:
    return {n: (batch, seq) for n in ("input_ids", "attention_mask", *names)}


CASES: dict[str, Case] = {
    "mnist_cnn_ts_dynbatch": Case(),
    "mnist_cnn_dynamo_dynbatch": Case(),
    "mnist_cnn_static": Case(),
    "dbnet_dyn_hw": Case(),
    "yolo_dynbatch": Case(),
    "segnet_dyn_hw": Case(),
    "paddle_ocr_det_dyn": Case(),
    "paddle2onnx_ocr_det": Case(),
    "bert_ts": Case(),
    "bert_dynamo": Case(),
    "bert_hf5_ts": Case(),
    "vit": Case(),
    "vit_ts": Case(),
    "gpt2": Case(),
    "llama": Case(),
    "gpt2_ts": Case(),
    "llama_ts": Case(),
    "mpt": Case(),
    "mpt_ts": Case(),
    "timm_resnet": Case(),
    "timm_mobilevit": Case(),
    "keras_cnn": Case(),
}


def _params(reason_of: str) -> list:
    out = []
    for name, case in CASES.items():
        reason = getattr(case, reason_of)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _load(name: str) -> onnx.ModelProto:
    return fill_placeholders(onnx.load(REAL / f"{name}.onnx"), seed=0)


def test_corpus_is_complete() -> None:
    """Every committed fixture has a case and a stated shape, and nothing else does."""
    assert {p.stem for p in REAL.glob("*.onnx")} == set(CASES) == set(SHAPES)


def test_paddle_fixture_keeps_weights_as_constant_nodes() -> None:
    """The paddle2onnx form survives filling: no initializers, random Constant weights."""
    proto = _load("paddle_ocr_det_dyn")
    assert len(proto.graph.initializer) == 0
    weights = [onnx.numpy_helper.to_array(n.attribute[0].t) for n in proto.graph.node
               if n.op_type == "Constant"]
    convs = [w for w in weights if w.ndim == 4]
    assert len(convs) == sum(n.op_type == "Conv" for n in proto.graph.node)
    assert all(np.std(w) > 0 for w in convs)
    assert proto.opset_import[0].version == 11


@pytest.mark.parametrize("name", _params("prune"))
def test_prune_with_check(name: str) -> None:
    """ratio 0.5 with the default numeric check: exits cleanly, matches the oracle, removes MACs."""
    result = compress(_load(name), PIPELINE, check=True)
    (check,) = result.report["checks"]
    assert check["against"] == "reference" and check["ok"], check
    assert check["rel_error"] <= TOLERANCE
    assert result.report["ratios"]["macs"] < 1.0, "nothing was pruned"
    (p,) = result.report["passes"]
    for group in p["details"]["groups"]:  # every group left whole says why
        if group["status"] == "blocked":
            assert group["blocked_by"], group


def _feeds(proto: onnx.ModelProto, shape: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Valid inputs at `shape`: zeros (in range for every table), ones for masks."""
    inits = {i.name for i in proto.graph.initializer}
    feeds = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        fill = np.ones if "mask" in vi.name else np.zeros
        feeds[vi.name] = fill(shape[vi.name], dtype=dtype)
    return feeds


def runtime_macs(proto: onnx.ModelProto, shape: dict[str, tuple[int, ...]]) -> int:
    """MACs of Conv/ConvTranspose/Gemm/MatMul from the shapes onnxruntime produces.

    Same definitions as `core/metrics.py` (Conv: out elements × weight fan-in;
    ConvTranspose: in elements × weight[1:]; Gemm/MatMul: out elements × K), but the
    shapes come from running the model, so the count does not share the tool's shape
    inference or its handling of symbolic dims.
    """
    counted = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
    nodes = [n for n in proto.graph.node if n.op_type in counted]
    known = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute[0].name == "value":
            known[n.output[0]] = tuple(n.attribute[0].t.dims)
    wanted = {t for n in nodes for t in (n.input[0], n.input[1], n.output[0])} - set(known)
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    outputs = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in sorted(wanted - outputs))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, _feeds(proto, shape))
    shapes = known | {n: v.shape for n, v in zip(names, values, strict=True)}
    total = 0
    for n in nodes:
        x, w, y = shapes[n.input[0]], shapes[n.input[1]], shapes[n.output[0]]
        if n.op_type == "Conv":
            total += int(np.prod(y)) * int(np.prod(w[1:]))
        elif n.op_type == "ConvTranspose":
            total += int(np.prod(x)) * int(np.prod(w[1:]))
        elif n.op_type == "Gemm":
            trans_a = next((a.i for a in n.attribute if a.name == "transA"), 0)
            total += int(np.prod(y)) * (x[0] if trans_a else x[-1])
        else:
            total += int(np.prod(y)) * x[-1]
    return total


def test_runtime_macs_counts_by_hand() -> None:
    """The counting helper itself, on the MNIST CNN counted by hand.

    conv1 26·26·8 outputs × 1·3·3, conv2 24·24·16 × 8·3·3, fc1 32 × 2304, fc2 10 × 32.
    """
    hand = 26 * 26 * 8 * 9 + 24 * 24 * 16 * 8 * 9 + 32 * 2304 + 10 * 32
    for name in ("mnist_cnn_static", "mnist_cnn_ts_dynbatch", "mnist_cnn_dynamo_dynbatch"):
        assert runtime_macs(_load(name), SHAPES[name]) == hand, name
    assert runtime_macs(_load("mnist_cnn_ts_dynbatch"), {"input": (3, 1, 28, 28)}) == 3 * hand


@pytest.mark.parametrize("name", _params("macs"))
def test_macs_at_stated_shape(name: str) -> None:
    """`input_shapes` fixes the symbolic dims for the report's MACs, before and after."""
    shape = SHAPES[name]
    proto = _load(name)
    result = compress(proto, PIPELINE, check=True, input_shapes=shape)
    assert result.report["before"]["macs"] == runtime_macs(proto, shape)
    assert result.report["after"]["macs"] == runtime_macs(result.model, shape)


@pytest.mark.parametrize("dynamic", [
    "mnist_cnn_ts_dynbatch", "mnist_cnn_dynamo_dynbatch",
])
def test_dynamic_batch_cnn_same_macs_ratio_as_static(dynamic: str) -> None:
    """A dynamic-batch `x.view(x.size(0), -1)` CNN prunes exactly like its static export."""
    static = compress(_load("mnist_cnn_static"), PIPELINE, check=True).report
    report = compress(_load(dynamic), PIPELINE, check=True).report
    assert report["ratios"]["macs"] == pytest.approx(static["ratios"]["macs"], abs=1e-3)
    assert report["ratios"]["params"] == pytest.approx(static["ratios"]["params"], abs=1e-3)


# The CI subset of the x86 compile: small and fast to build. (fixture, input_shapes or None,
# xfail reason or None). All: `tools/zoo_table.py --no-light --no-torchvision --compile`.
COMPILE_SUBSET = [
    ("mnist_cnn_ts_dynbatch", None, None),
    ("yolo_dynbatch", None, None),  # Shape chains folded before import
    ("paddle_ocr_det_dyn", {"x": (1, 3, 64, 64)}, None),  # opset 11 upgraded, H×W given
    ("segnet_dyn_hw", {"x": (1, 3, 64, 64)}, None),  # ConvTranspose between NHWC convs
    ("bert_ts", _tokens(1, 16, "token_type_ids"), None),  # token ids within their tables
    ("bert_dynamo", _tokens(1, 16, "token_type_ids"), None),
    ("bert_hf5_ts", _tokens(1, 16, "token_type_ids"), None),  # transformers 5: scalar fill
    ("keras_cnn", None, None),  # tf2onnx: Reshape whose shape is a computed tensor
    ("vit", None, None),  # dynamo: patch Conv, cls Concat, heads pruned (issue 14)
    ("vit_ts", None, None),  # the same ViT through TorchScript
    ("gpt2_ts", _tokens(1, 16), None),  # TorchScript: fused c_attn Gemm + Split, causal mask
    ("llama", _tokens(1, 16), None),  # dynamo: GQA, RoPE, SwiGLU, RMSNorm
    # ragged sequences: attention keys padded to whole vectors (schedule/pad_keys.py), the
    # token rows carried padded through the row-wise layers (schedule/pad_rows.py)
    ("gpt2", _tokens(1, 23), None),  # dynamo: causal Where(mask, s, min) before softmax
    ("mpt_ts", _tokens(1, 23), None),  # ALiBi add + padding-mask Where chains
]


@pytest.mark.parametrize("name,shape", [
    pytest.param(n, s, id=n, marks=[pytest.mark.xfail(strict=True, reason=r)] if r else [])
    for n, s, r in COMPILE_SUBSET
])
def test_compile_x86(name: str, shape: dict[str, tuple[int, ...]] | None,
                     tmp_path: Path) -> None:
    """Prune, then build for x86 with TVM and verify the artifact against onnxruntime."""
    pytest.importorskip("tvm")
    kwargs = {} if shape is None else {"input_shapes": shape}
    result = compress(_load(name), PIPELINE, check=True, target="x86",
                      artifact=tmp_path / "art", **kwargs)
    verify = result.report["target"]["verify"]
    assert verify["ran"] and verify["ok"] and verify["rel_error"] <= TOLERANCE, verify
