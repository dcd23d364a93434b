"""Streamed sequential OBS sparsify (compress_ir.stream.sequential) and the block cut.

Oracle: the in-memory pipeline, `compress(model, "sparsify{criterion=obs,...}")`, on the
same model and calibration data. It captures each stage's inputs from the whole model
(one onnxruntime session of the full graph, earlier stages already sparse), so equal
weights show that the block-by-block streaming (cut, side tensors, sequential order,
dense stream for the refit, held-out split) reproduces the sequential algorithm. The
Hessian sums differ only in float order (q/k/v share rows), hence a tolerance; the masks
must be identical.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compress_ir.api import compress
from compress_ir.core.calibration import CalibrationSet
from compress_ir.core.errors import UsageError
from compress_ir.frontends.placeholders import fill_placeholders
from compress_ir.passes.transform.sparsify import SparsifyOptions
from compress_ir.stream.blocks import decompose
from compress_ir.stream.engine import weight_nodes
from compress_ir.stream.external import load_graph
from compress_ir.stream.sequential import stream_obs
from compress_ir.stream.synth import LlamaShape, build

ort = pytest.importorskip("onnxruntime")

SHAPE = LlamaShape(layers=2, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=50, seq=8)
REAL_LLAMA = Path(__file__).parent / "fixtures" / "real" / "llama.onnx"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("synth") / "model.onnx"
    build(SHAPE, path, seed=1)
    return path


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The transformers LlamaForCausalLM export (dynamo, GQA, RoPE and mask computed in
    the graph), random weights, saved with external data."""
    path = tmp_path_factory.mktemp("real") / "llama.onnx"
    onnx.save(fill_placeholders(onnx.load(str(REAL_LLAMA)), seed=0), str(path),
              save_as_external_data=True, location="llama.onnx.data")
    return path


def _synth_calib(count: int = 16) -> CalibrationSet:
    ids = np.random.default_rng(0).integers(0, SHAPE.vocab, (count, SHAPE.seq))
    return CalibrationSet({"input_ids": ids.astype(np.int64)}, "test")


def _real_calib() -> CalibrationSet:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 96, (12, 16)).astype(np.int64)
    mask = np.ones((12, 16), np.int64)
    mask[::3, -4:] = 0  # padded samples: the mask path of the prelude matters
    return CalibrationSet({"input_ids": ids, "attention_mask": mask}, "test")


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _run(model: str | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    data = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_synth_blocks_are_the_residual_stream(synth: Path) -> None:
    dec = decompose(load_graph(synth))
    want = ["embed"] + [f"layers.{i}.residual_{k}" for i in range(SHAPE.layers)
                        for k in ("attn", "mlp")]
    assert dec.points == want
    assert [n.op_type for n in dec.segments[0].nodes] == ["Gather"]
    for i, block in enumerate(dec.blocks):
        assert block.inputs == [want[i]] and block.outputs == [want[i + 1]]
    assert dec.segments[-1].outputs == ["logits"]
    # every node in exactly one segment, graph order kept
    order = [n.name for s in dec.segments for n in s.nodes]
    assert order == [n.name for n in load_graph(synth).graph.node]


def test_real_export_side_tensors_come_from_the_prelude(real: Path) -> None:
    """RoPE cos/sin and the causal+padding mask are computed once, read by every
    attention block; the MLP blocks read only the residual point."""
    model = load_graph(real)
    dec = decompose(model)
    assert len(dec.blocks) == 4  # 2 layers x (attention, MLP)
    attn, mlp = dec.blocks[0], dec.blocks[1]
    assert len(attn.inputs) > 1 and set(attn.inputs[1:]) <= set(dec.segments[0].outputs)
    assert mlp.inputs == [dec.points[1]]
    weighted = {n.name for n, _ in weight_nodes(model)}
    per_block = [sum(n.name in weighted for n in b.nodes) for b in dec.blocks]
    assert per_block == [4, 3, 4, 3]  # q k v o | gate up down


def test_no_residual_stream_is_refused() -> None:
    from onnx import TensorProto, helper

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    with pytest.raises(UsageError, match="residual"):
        decompose(helper.make_model(graph))


def _compare(src: Path, out: Path, calib: CalibrationSet, spec: str,
             opts: SparsifyOptions) -> dict:
    report = stream_obs(src, out, calib, opts)
    oracle = compress(onnx.load(str(src)), spec, calibration=calib).model
    got, want = _weights(onnx.load(str(out))), _weights(oracle)
    assert report.layers, "nothing sparsified"
    for entry in report.layers:
        a, b = got[entry["weight"]], want[entry["weight"]]
        assert np.array_equal(a == 0, b == 0), entry["node"]
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max(),
                                   err_msg=entry["node"])
    onnx.checker.check_model(str(out))
    feeds = {k: v[:1] for k, v in calib.arrays.items()}
    np.testing.assert_allclose(_run(str(out), feeds), _run(oracle, feeds), rtol=1e-3,
                               atol=1e-4)
    return {"report": report, "weights": got}


@pytest.mark.parametrize(("pattern", "correct"), [("2:4", False), ("unstructured", True)])
def test_synth_streamed_obs_equals_in_memory(synth: Path, tmp_path: Path, pattern: str,
                                             correct: bool) -> None:
    spec = (f"sparsify{{criterion=obs,pattern={pattern},correct={str(correct).lower()},"
            "solver=obs}")
    opts = SparsifyOptions(criterion="obs", solver="obs", pattern=pattern, correct=correct)
    res = _compare(synth, tmp_path / "o.onnx", _synth_calib(), spec, opts)
    report, weights = res["report"], res["weights"]
    assert len(report.layers) == 7 * SHAPE.layers - 1  # skip-first (q of layer 0)
    zeros = sum(int((weights[e["weight"]] == 0).sum()) for e in report.layers)
    total = sum(weights[e["weight"]].size for e in report.layers)
    assert zeros == report.zeros and zeros / total == pytest.approx(0.5, abs=1e-3)
    if pattern == "2:4":
        for e in report.layers:  # MatMul weight [K, N]: groups of 4 along K
            w = weights[e["weight"]]
            assert (np.count_nonzero(w.T.reshape(w.shape[1], -1, 4) == 0, axis=2) >= 2).all()
    for e in report.layers:  # OBS is never worse than magnitude on its own Hessian
        assert e["layer_rel_error"] <= e["layer_rel_error_magnitude"] + 1e-9


def test_real_llama_streamed_default_obs_equals_in_memory(real: Path, tmp_path: Path) -> None:
    """Default options (correct with the held-out decision) on the transformers export."""
    opts = SparsifyOptions(criterion="obs", solver="obs", pattern="2:4")
    res = _compare(real, tmp_path / "o.onnx", _real_calib(), "sparsify{criterion=obs,"
                   "pattern=2:4,solver=obs}", opts)
    decisions = [e.get("correct") for e in res["report"].layers]
    assert any(d is not None for d in decisions)  # the held-out choice ran (stages > 0)


def test_input_not_modified_and_changed_output(synth: Path, tmp_path: Path) -> None:
    import hashlib

    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    files = [synth, synth.parent / "model.onnx.data"]
    before = [digest(p) for p in files]
    out = tmp_path / "o.onnx"
    stream_obs(synth, out, _synth_calib(4),
               SparsifyOptions(criterion="obs", solver="obs", correct=False))
    assert [digest(p) for p in files] == before
    ids = _synth_calib(1).arrays
    assert not np.allclose(_run(str(out), ids), _run(str(synth), ids), atol=1e-4)


def test_unsupported_options_refused(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        stream_obs(synth, tmp_path / "o.onnx", _synth_calib(2),
                   SparsifyOptions(criterion="obs", solver="obs", scope="global"))
    with pytest.raises(UsageError):
        stream_obs(synth, tmp_path / "o.onnx", _synth_calib(2), SparsifyOptions())
    assert not list(tmp_path.iterdir())


# -- block-wise channel-prune (compress_ir.stream.blockwise) --------------------------------
def test_blockwise_channel_prune_equals_in_memory(synth: Path, tmp_path: Path) -> None:
    """Heads (GQA: a KV head with its query heads) and FFN neurons pruned block by block
    give the in-memory pass's weights and the same function."""
    from compress_ir.stream.blockwise import stream_blockwise

    out = tmp_path / "o.onnx"
    report = stream_blockwise(synth, out, "channel-prune{ratio=0.5}")
    onnx.checker.check_model(str(out))
    oracle = compress(onnx.load(str(synth)), "channel-prune{ratio=0.5}").model
    got, want = _weights(onnx.load(str(out))), _weights(oracle)
    for name in [w.name for _, w in weight_nodes(load_graph(synth))]:
        assert np.array_equal(got[name], want[name]), name
    d = SHAPE.head_dim
    assert got["layers.0.attn.q_proj"].shape == (SHAPE.hidden, SHAPE.hidden // 2)
    assert got["layers.0.attn.k_proj"].shape == (SHAPE.hidden, SHAPE.kv_heads * d // 2)
    assert got["layers.1.mlp.down_proj"].shape == (SHAPE.ffn // 2, SHAPE.hidden)
    ids = _synth_calib(1).arrays
    np.testing.assert_allclose(_run(str(out), ids), _run(oracle, ids), rtol=1e-5, atol=1e-5)
    assert [b["kept"] for b in report.blocks] == [
        {"heads": [SHAPE.heads // 2, SHAPE.heads]}, {"neurons": [SHAPE.ffn // 2, SHAPE.ffn]}
    ] * SHAPE.layers
    assert report.params_after < 0.55 * report.params_before


def test_blockwise_with_calibration_runs_on_pruned_activations(synth: Path,
                                                                 tmp_path: Path) -> None:
    """A data-driven criterion: block 0 sees the same inputs as the in-memory pass (the
    embedding), so its choice must match; later blocks see the pruned blocks' outputs
    (sequential), the in-memory pass the dense ones, so they may differ."""
    from compress_ir.stream.blockwise import stream_blockwise

    spec = "channel-prune{ratio=0.5,criterion=act-mean}"
    out = tmp_path / "o.onnx"
    report = stream_blockwise(synth, out, spec, calib=_synth_calib(8))
    onnx.checker.check_model(str(out))
    assert np.isfinite(_run(str(out), _synth_calib(1).arrays)).all()
    oracle = _weights(compress(onnx.load(str(synth)), spec, calibration=_synth_calib(8)).model)
    got = _weights(onnx.load(str(out)))
    for name in ("layers.0.attn.q_proj", "layers.0.attn.k_proj", "layers.0.attn.o_proj"):
        assert np.array_equal(got[name], oracle[name]), name
    assert all(b["macs_ratio"] == pytest.approx(0.5, abs=0.05) for b in report.blocks)


def test_blockwise_refuses_other_passes_and_weighted_side_chains(synth: Path,
                                                                 tmp_path: Path) -> None:
    from compress_ir.stream.blockwise import stream_blockwise

    with pytest.raises(UsageError, match="channel-prune"):
        stream_blockwise(synth, tmp_path / "o.onnx", "sparsify")
    # a side tensor computed in the prelude with a weight layer is not copied into blocks
    rng = np.random.default_rng(0)
    w = {n: numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
         for n, s in (("w_side", (8, 16)), ("w1", (8, 16)), ("w2", (16, 8)))}
    nodes = [onnx.helper.make_node("MatMul", ["side_in", "w_side"], ["side"], name="side_mm"),
             onnx.helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             onnx.helper.make_node("Add", ["h", "side"], ["hs"], name="add_side"),
             onnx.helper.make_node("Relu", ["hs"], ["r"], name="relu"),
             onnx.helper.make_node("MatMul", ["r", "w2"], ["b"], name="mm2"),
             onnx.helper.make_node("Add", ["x", "b"], ["y"], name="residual"),
             onnx.helper.make_node("Relu", ["y"], ["z"], name="head")]
    f = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", f, ["n", 8]),
                     onnx.helper.make_tensor_value_info("side_in", f, ["n", 8])],
        [onnx.helper.make_tensor_value_info("z", f, ["n", 8])], list(w.values()))
    src = tmp_path / "side.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]),
              str(src))
    out = tmp_path / "out"
    out.mkdir()
    calib = CalibrationSet({"x": rng.standard_normal((4, 8)).astype(np.float32),
                            "side_in": rng.standard_normal((4, 8)).astype(np.float32)}, "t")
    with pytest.raises(UsageError, match="side_mm.*weight layer"):
        stream_blockwise(src, out / "o.onnx", "channel-prune{ratio=0.5}", calib=calib)
    assert not list(out.iterdir())


def _token_feeds(batch: int, seq: int, names: list[str]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + seq)
    mask = np.ones((batch, seq), np.int64)
    mask[0, -3:] = 0  # a padded sample: the mask chain copied into each block matters
    values = {"input_ids": rng.integers(0, 50, (batch, seq)).astype(np.int64),
              "attention_mask": mask, "token_type_ids": np.zeros((batch, seq), np.int64),
              "pixel_values": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
    return {n: values[n] for n in names}


@pytest.mark.parametrize("name", ["llama", "llama_ts", "gpt2_ts", "bert_dynamo", "mpt",
                                  "vit_ts"])
def test_blockwise_real_exports_equal_in_memory_at_other_shapes(name: str,
                                                                  tmp_path: Path) -> None:
    """transformers exports compute shape vectors (with the head count), masks and RoPE
    tables once in the prelude; each block gets its own copy of that chain and keeps the
    graph's symbolic batch/sequence, so the streamed model equals the in-memory pass's at
    shapes other than the calibration's (before: refused, or, as for vit_ts, the block's
    head reshapes folded at the calibration batch)."""
    from compress_ir.stream.blockwise import stream_blockwise

    model = fill_placeholders(onnx.load(str(REAL_LLAMA.parent / f"{name}.onnx")), seed=0)
    src = tmp_path / "m.onnx"
    saved = onnx.ModelProto()
    saved.CopyFrom(model)  # saving with external data rewrites the proto it is given
    onnx.save(saved, str(src), save_as_external_data=True, location="m.onnx.data")
    inputs = [i.name for i in model.graph.input]
    calib = CalibrationSet(_token_feeds(4, 16, inputs), "test")
    out = tmp_path / "o.onnx"
    report = stream_blockwise(src, out, "channel-prune{ratio=0.5}", calib=calib)
    onnx.checker.check_model(str(out))
    assert report.params_after < 0.7 * report.params_before
    oracle = compress(model, "channel-prune{ratio=0.5}").model
    for batch, seq in ((1, 10), (3, 24)):
        feeds = _token_feeds(batch, seq, inputs)
        np.testing.assert_allclose(_run(str(out), feeds), _run(oracle, feeds),
                                   rtol=1e-5, atol=1e-5)


# -- the CLI: --stream routes obs and channel-prune to the block engines --------------------
def test_cli_stream_obs_equals_engine(synth: Path, tmp_path: Path) -> None:
    from compress_ir.cli import main

    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=_synth_calib(4).arrays["input_ids"])
    assert main([str(synth), "--pass", "sparsify{criterion=obs,pattern=2:4,correct=false}",
                 "--calib", str(calib), "-o", str(tmp_path / "cli.onnx"), "--stream", "on",
                 "-q"]) == 0
    stream_obs(synth, tmp_path / "eng.onnx", _synth_calib(4),
               SparsifyOptions(criterion="obs", solver="obs", pattern="2:4", correct=False))
    a, b = _weights(onnx.load(str(tmp_path / "cli.onnx"))), _weights(
        onnx.load(str(tmp_path / "eng.onnx")))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_cli_stream_channel_prune(synth: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from compress_ir.cli import main

    out = tmp_path / "cli.onnx"
    assert main([str(synth), "--pass", "channel-prune{ratio=0.5}", "-o", str(out),
                 "--stream", "on"]) == 0
    assert "block-wise" in capsys.readouterr().out
    assert _weights(onnx.load(str(out)))["layers.1.mlp.up_proj"].shape == (
        SHAPE.hidden, SHAPE.ffn // 2)


def test_cli_stream_channel_prune_real_export(real: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The dynamo LLaMA export (dynamic batch/sequence) through the CLI: without data the
    block shapes are unknown (exit 2, the message says what to pass); with
    `--calib random:4` the weight criterion prunes every block and the output runs at
    another shape, equal to the in-memory pass."""
    from compress_ir.cli import main

    out = tmp_path / "cli.onnx"
    spec = "channel-prune{ratio=0.5}"
    assert main([str(real), "--pass", spec, "-o", str(out), "--stream", "on"]) == 2
    assert "--calib random:4" in capsys.readouterr().err
    assert not out.exists()
    assert main([str(real), "--pass", spec, "-o", str(out), "--stream", "on",
                 "--calib", "random:4"]) == 0
    oracle = compress(fill_placeholders(onnx.load(str(REAL_LLAMA)), seed=0), spec).model
    feeds = _token_feeds(2, 11, ["input_ids", "attention_mask"])
    np.testing.assert_allclose(_run(str(out), feeds), _run(oracle, feeds), rtol=1e-5, atol=1e-5)


def test_cli_stream_obs_without_calib_exits_2(synth: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from compress_ir.cli import main

    assert main([str(synth), "--pass", "sparsify{criterion=obs}", "-o",
                 str(tmp_path / "o.onnx"), "--stream", "on"]) == 2
    assert "--calib" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
