"""Does calibrating on the evaluation's kind of text recover what sparsity loses there?

Why: on the large evaluation (`bench_transformer_accuracy.py --eval large`) 2:4 sparsity
loses most on numpy's docstrings (numpydoc sections, `>>>` examples), a kind of text the
calibration set (standard-library docstrings) lacks. Here the networkx and numpy pairs of
the large set are split in two halves by a hash of the name. Half A gives calibration text;
the scores are taken on the rest (half B and every standard-library pair), never on A.
Each pipeline is run twice: with the benchmark's calibration (64 windows of stdlib text),
and with 32 of those windows plus 32 windows of half A. Both runs are scored on the same
pairs, and the paired intervals are printed.

    python tools/calib_domain_transformer.py 'sparsify{pattern=2:4}'
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import transformer_data as td  # noqa: E402
from paired_stats import paired_change  # noqa: E402

from compress_ir.api import compress  # noqa: E402
from compress_ir.core.calibration import CalibrationSet  # noqa: E402

PACKAGES = td.LARGE_PACKAGES


def package(d: td.Docstring) -> str:
    top = d.name.split(".")[0]
    return top if top in PACKAGES else "stdlib"


def halves(pairs: list[td.Docstring]) -> tuple[list[td.Docstring], list[td.Docstring]]:
    """(A: half of the package pairs, for calibration; B: everything else, for scoring)."""
    def in_a(d: td.Docstring) -> bool:
        return (package(d) != "stdlib"
                and hashlib.sha256(f"calib:{d.name}".encode()).digest()[0] % 2 == 0)
    return [d for d in pairs if in_a(d)], [d for d in pairs if not in_a(d)]


def mixed_windows(tok, pool: list[td.Docstring], extra: list[td.Docstring],  # noqa: ANN001
                  count: int) -> dict[str, np.ndarray]:
    """`count` windows: half packed from `pool`, half from `extra`."""
    a = td.calibration_windows(tok, pool, count // 2)
    b = td.calibration_windows(tok, extra, count - count // 2)
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="pipelines (';'-separated passes)")
    parser.add_argument("--calib", type=int, default=64, help="calibration windows")
    args = parser.parse_args(argv)
    _, pool = td.split(500)
    part_a, part_b = halves(td.large_pairs())
    tok = td.tokenizer()
    calibs = {"stdlib": CalibrationSet(td.calibration_windows(tok, pool, args.calib),
                                       f"python-docstrings:{args.calib}x{td.SEQ}"),
              "stdlib+A": CalibrationSet(mixed_windows(tok, pool, part_a, args.calib),
                                         f"python-docstrings+halfA:{args.calib}x{td.SEQ}")}
    metric = td.Retrieval(part_b)
    groups = np.array([package(d) for d in part_b])
    with tempfile.TemporaryDirectory() as tmp:
        model = onnx.load(td.export_onnx(Path(tmp) / "minilm.onnx"))
    dense = metric.hits(model)
    print(f"scored on {len(part_b)} pairs (half A: {len(part_a)} pairs, calibration only); "
          f"dense recall@1 {dense.mean():.4f}", flush=True)
    print("| pipeline | calibration | recall@1 | vs dense | "
          + " | ".join(["stdlib", *PACKAGES]) + " | seconds |")
    print("|---|---|---:|---:|" + "---:|" * (len(PACKAGES) + 2))
    for spec in args.specs:
        for name, calib in calibs.items():
            t0 = time.perf_counter()
            out = compress(model, spec.split(";"), calibration=calib).model
            seconds = time.perf_counter() - t0
            hits = metric.hits(out)
            parts = [paired_change(dense[groups == g], hits[groups == g]).text()
                     for g in ("stdlib", *PACKAGES)]
            print(f"| `{spec}` | {name} | {hits.mean():.4f} | "
                  f"{paired_change(dense, hits).text()} | " + " | ".join(parts)
                  + f" | {seconds:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
