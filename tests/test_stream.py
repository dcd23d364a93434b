"""Streamed sparsification of an external-data LLaMA-style decoder (compress_ir.stream).

The oracle is the in-memory pipeline (`compress(..., "sparsify{...}")`) on the same
model loaded whole: the streamed output must hold exactly the same weights, load in
onnxruntime and compute what the in-memory result computes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compress_ir.api import compress
from compress_ir.core.errors import ModelLoadError, UsageError
from compress_ir.stream.engine import stream_sparsify, weight_nodes
from compress_ir.stream.external import TensorReader, external_bytes, load_graph
from compress_ir.stream.synth import LlamaShape, build

ort = pytest.importorskip("onnxruntime")

SHAPE = LlamaShape(layers=2, hidden=64, heads=8, kv_heads=2, ffn=96, vocab=50, seq=8)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llama") / "model.onnx"
    build(SHAPE, path, seed=1)
    return path


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _run(model: str | onnx.ModelProto) -> np.ndarray:
    data = model if isinstance(model, str) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    ids = np.arange(SHAPE.seq, dtype=np.int64).reshape(1, -1) % SHAPE.vocab
    return sess.run(None, {"input_ids": ids})[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_source_is_external_and_valid(source: Path) -> None:
    graph = load_graph(source)
    assert external_bytes(graph) > 0
    assert not any(t.raw_data for t in graph.graph.initializer if t.data_location == 1)
    onnx.checker.check_model(str(source))
    assert len(weight_nodes(graph)) == 7 * SHAPE.layers + 1  # q k v o gate up down + lm_head


@pytest.mark.parametrize(("pattern", "spec"), [
    ("2:4", "sparsify{pattern=2:4}"),
    ("unstructured", "sparsify{sparsity=0.5}"),
])
def test_streamed_equals_in_memory(source: Path, tmp_path: Path, pattern: str,
                                   spec: str) -> None:
    out = tmp_path / "out.onnx"
    report = stream_sparsify(source, out, pattern)
    oracle = compress(onnx.load(str(source)), spec).model
    got, want = _weights(onnx.load(str(out))), _weights(oracle)
    layers = [w.name for _, w in weight_nodes(load_graph(source))]
    for name in layers:
        assert np.array_equal(got[name], want[name]), name
    assert len(report.layers) == len(layers) - 2  # skip-first and skip-last
    np.testing.assert_allclose(_run(str(out)), _run(oracle), rtol=1e-4, atol=1e-4)


def test_output_checks_and_counts_from_output(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    report = stream_sparsify(source, out, "2:4")
    onnx.checker.check_model(str(out))
    weights = _weights(onnx.load(str(out)))
    zeros = total = 0
    for entry in report.layers:
        w = weights[entry["weight"]]  # MatMul weight [K, N]: groups of 4 along K
        groups = w.T.reshape(w.shape[1], -1, 4)
        assert (np.count_nonzero(groups == 0, axis=2) >= 2).all()
        zeros += int(np.count_nonzero(w == 0))
        total += w.size
    assert report.zeros == zeros and report.weights == total
    assert zeros / total == pytest.approx(0.5, abs=1e-3)
    assert (out.parent / "out.onnx.data").stat().st_size >= report.bytes_written > 0


def test_output_matches_masked_original(source: Path, tmp_path: Path) -> None:
    """ORT on the output == ORT on the original with the output's zeros applied."""
    out = tmp_path / "out.onnx"
    stream_sparsify(source, out, "unstructured", sparsity=0.3)
    original = onnx.load(str(source))
    got = _weights(onnx.load(str(out)))
    for t in original.graph.initializer:
        if t.name in got and t.dims:
            value = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.where(got[t.name] == 0, 0, value), t.name))
    np.testing.assert_allclose(_run(str(out)), _run(original), rtol=1e-5, atol=1e-5)
    assert not np.allclose(_run(str(out)), _run(str(source)), atol=1e-3)  # it did change


def test_skip_flags(source: Path, tmp_path: Path) -> None:
    report = stream_sparsify(source, tmp_path / "o.onnx", "2:4", skip_first=False,
                             skip_last=False)
    assert report.skipped == []
    assert len(report.layers) == len(weight_nodes(load_graph(source)))


def test_input_not_modified(source: Path, tmp_path: Path) -> None:
    before = [_digest(source), _digest(source.parent / "model.onnx.data")]
    stream_sparsify(source, tmp_path / "o.onnx", "2:4")
    assert [_digest(source), _digest(source.parent / "model.onnx.data")] == before


def test_bad_pattern_is_usage_error(source: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        stream_sparsify(source, tmp_path / "o.onnx", "3:2")
    assert not list(tmp_path.iterdir())


def test_truncated_data_leaves_no_output(tmp_path: Path) -> None:
    src = tmp_path / "src" / "m.onnx"
    src.parent.mkdir()
    build(SHAPE, src)
    data = src.parent / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(ModelLoadError, match="truncated"):
        stream_sparsify(src, out_dir / "o.onnx", "2:4")
    assert not list(out_dir.iterdir())


def test_location_outside_folder_refused(source: Path) -> None:
    graph = load_graph(source)
    tensor = next(t for t in graph.graph.initializer if t.data_location == 1)
    next(e for e in tensor.external_data if e.key == "location").value = "../../etc/passwd"
    with pytest.raises(ModelLoadError, match="leaves"):
        TensorReader(source).read(tensor)


def test_reader_matches_onnx_loader(source: Path) -> None:
    full = _weights(onnx.load(str(source)))
    reader = TensorReader(source)
    for t in load_graph(source).graph.initializer:
        assert np.array_equal(reader.read(t), full[t.name]), t.name


def test_cli_stream_on_equals_engine(source: Path, tmp_path: Path) -> None:
    from compress_ir.cli import main

    assert main([str(source), "--pass", "sparsify{pattern=2:4}", "-o",
                 str(tmp_path / "cli.onnx"), "--stream", "on", "-q"]) == 0
    stream_sparsify(source, tmp_path / "eng.onnx", "2:4")
    a, b = _weights(onnx.load(str(tmp_path / "cli.onnx"))), _weights(
        onnx.load(str(tmp_path / "eng.onnx")))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra", [
    ["--pass", "sparsify{criterion=obs}", "-o", "OUT"],
    ["--pass", "sparsify{pattern=block}", "-o", "OUT"],
    ["--pass", "sparsify", "--pass", "fold-bn", "-o", "OUT"],
    ["--pass", "sparsify"],  # no -o
])
def test_cli_stream_refuses_with_exit_2(source: Path, tmp_path: Path, extra: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from compress_ir.cli import main

    extra = [str(tmp_path / "o.onnx") if e == "OUT" else e for e in extra]
    assert main([str(source), *extra, "--stream", "on"]) == 2
    assert "--stream" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_stream_auto_small_model_runs_in_memory(source: Path, tmp_path: Path) -> None:
    from compress_ir.cli import main
    from compress_ir.stream.api import should_stream

    assert not should_stream("auto", str(source))  # far below 2 GiB of external data
    assert main([str(source), "--pass", "sparsify{pattern=2:4}", "-o",
                 str(tmp_path / "o.onnx"), "-q"]) == 0
    assert onnx.load(str(tmp_path / "o.onnx")).graph.initializer


@pytest.mark.parametrize("out", ["same", "stdout"])
def test_output_that_is_the_input_is_refused_before_work(tmp_path: Path, out: str) -> None:
    """-o equal to the input would rename the new weights over the input's data file."""
    from compress_ir.core.errors import OutputError

    src = tmp_path / "m.onnx"
    build(SHAPE, src)
    before = {p.name: _digest(p) for p in tmp_path.iterdir()}
    with pytest.raises(OutputError, match="input|-o FILE"):
        stream_sparsify(src, src if out == "same" else "-", "2:4")
    assert {p.name: _digest(p) for p in tmp_path.iterdir()} == before  # nothing left behind
