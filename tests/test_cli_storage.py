"""CLI wiring of the storage-oriented options: --sizes and --sparse-storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from compress_ir.cli import main
from compress_ir.core import numeric

MODEL = Path(__file__).resolve().parents[1] / "tools" / "models" / "mnist_plain_cnn.onnx"


def _zeros(path: Path) -> float:
    """Fraction of zeros over all 2-D+ weights, reading dense and sparse initializers."""
    proto = onnx.load(str(path))
    total = zeros = 0
    for init in proto.graph.initializer:
        if len(init.dims) >= 2:
            a = numpy_helper.to_array(init)
            total, zeros = total + a.size, zeros + int((a == 0).sum())
    for sp in proto.graph.sparse_initializer:
        size = int(np.prod(sp.dims))
        total, zeros = total + size, zeros + size - int(np.prod(sp.values.dims))
    return zeros / total


def test_sparse_storage_writes_sparse_initializers_with_equal_outputs(tmp_path: Path) -> None:
    dense, sparse = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    pipeline = "sparsify{sparsity=0.9}"
    assert main([str(MODEL), "--pass", pipeline, "-o", str(dense), "--quiet"]) == 0
    assert main([str(MODEL), "--pass", pipeline, "-o", str(sparse), "--sparse-storage",
                 "--quiet"]) == 0
    stored = onnx.load(str(sparse))
    assert len(stored.graph.sparse_initializer) >= 3  # the three sparsified layers
    onnx.checker.check_model(stored)
    assert sparse.stat().st_size < 0.5 * dense.stat().st_size
    assert abs(_zeros(sparse) - _zeros(dense)) < 1e-9
    err = numeric.compare(onnx.load(str(sparse)), onnx.load(str(dense)), seed=1)
    assert err < 1e-6


def test_sizes_section_only_when_asked_or_sparsifying(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    assert main([str(MODEL), "--pass", "channel-prune{ratio=0.25}", "--report", str(report),
                 "--quiet"]) == 0
    assert "sizes" not in json.loads(report.read_text())
    assert main([str(MODEL), "--pass", "channel-prune{ratio=0.25}", "--sizes", "--report",
                 str(report), "--quiet"]) == 0
    assert json.loads(report.read_text())["sizes"]["total"]
    assert main([str(MODEL), "--pass", "sparsify{sparsity=0.8}", "--report", str(report),
                 "--quiet"]) == 0
    total = json.loads(report.read_text())["sizes"]["total"]
    assert total, "sparsify must add the size report by default"


def test_sparse_storage_needs_output(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([str(MODEL), "--pass", "sparsify", "--sparse-storage"])
    assert exc.value.code == 2
    assert "--sparse-storage needs -o" in capsys.readouterr().err
