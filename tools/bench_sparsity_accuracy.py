"""Accuracy vs weight sparsity on real data (MNIST): magnitude vs OBS, no fine-tuning.

Why: zeros only help if accuracy survives them. Han et al. (2015) prune by
magnitude and retrain; SparseGPT-style OBS instead updates the surviving weights
from calibration data so that each layer's output is preserved, with no
retraining. This measures both on the three trained MNIST models
(`tools/models/mnist_*.onnx`): `sparsify` at 50 / 70 / 90 % unstructured and 2:4,
scope layer and global, OBS with and without the dense-target correction, first and
last weighted layers dense (the pass default).
Every point runs through `compress()` with the numeric check on (the written
model equals its reference in onnxruntime), then the 10,000 test images are
scored in onnxruntime.

    pip install -e '.[bench]'
    python tools/bench_sparsity_accuracy.py --out tools/results/sparsity_accuracy/

Calibration: 512 training images (`--calib-samples`, seed 0; also used by
magnitude only for the reported output error). Writes table.md, results.json and
accuracy_vs_sparsity.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mnist_data import load_mnist  # noqa: E402
from plot_style import finish_accuracy_axes, save_figure  # noqa: E402

from compress_ir.api import compress  # noqa: E402
from compress_ir.core.calibration import CalibrationSet  # noqa: E402

MODELS = ("mnist_plain_cnn", "mnist_resnet", "mnist_mobilenet")
SETTINGS = ("50%", "70%", "90%", "2:4")
# (label, criterion, scope, extra options)
METHODS = (
    ("magnitude / layer", "magnitude", "layer", ""),
    ("magnitude / global", "magnitude", "global", ""),
    ("obs, no correction (SparseGPT) / layer", "obs", "layer", ",correct=false,solver=obs"),
    ("obs / layer", "obs", "layer", ",solver=obs"),
    ("obs / global", "obs", "global", ",solver=obs"),
    ("obs + admm / layer", "obs", "layer", ",solver=admm"),  # the default since stop 25
)


@dataclasses.dataclass
class Point:
    model: str
    method: str
    setting: str
    accuracy: float
    sparsity_layers: float  # zeros / weights of the sparsified layers
    sparsity_all: float  # zeros / weights of every Conv/Gemm/MatMul weight
    output_rel_error: float  # vs the dense model on the calibration images
    seconds: float


def accuracy(proto: onnx.ModelProto, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for start in range(0, len(images), 1000):
        logits = sess.run(None, {name: images[start : start + 1000]})[0]
        correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    return correct / len(images)


def spec(setting: str, criterion: str, scope: str, extra: str = "") -> str:
    pattern = "pattern=2:4" if setting == "2:4" else f"sparsity={int(setting[:-1]) / 100}"
    return f"sparsify{{{pattern},criterion={criterion},scope={scope}{extra}}}"


def run(models_dir: Path, out: Path, calib_samples: int, names: tuple[str, ...],
        methods: tuple[str, ...]) -> list[Point]:
    images, labels = load_mnist("test")
    train, _ = load_mnist("train")
    rng = np.random.default_rng(0)
    calib = CalibrationSet(
        {"input": train[rng.choice(len(train), calib_samples, replace=False)]}, "mnist-train")
    points: list[Point] = []
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        model = onnx.load(models_dir / f"{name}.onnx")
        dense = accuracy(model, images, labels)
        points.append(Point(name, "dense", "0%", dense, 0.0, 0.0, 0.0, 0.0))
        print(f"\n{name}: dense accuracy {dense:.4f}", flush=True)
        for label, criterion, scope, extra in METHODS:
            if label not in methods:
                continue
            for setting in SETTINGS:
                if setting == "2:4" and scope == "global":
                    continue  # N:M fixes every layer's sparsity
                t0 = time.perf_counter()
                result = compress(model, spec(setting, criterion, scope, extra),
                                  calibration=calib)
                seconds = time.perf_counter() - t0
                stats = result.report["passes"][0]["stats"]
                acc = accuracy(result.model, images, labels)
                points.append(Point(
                    name, label, setting, acc, stats["sparsity_sparsified_layers"],
                    stats["sparsity_all_weighted_layers"], stats["output_rel_error"],
                    round(seconds, 2)))
                print(f"  {label:40s} {setting:4s} acc {acc:.4f}  sparsity "
                      f"{stats['sparsity_all_weighted_layers']:.3f} (all)  out err "
                      f"{stats['output_rel_error']:.3f}  {seconds:.1f} s", flush=True)
        (out / "results.json").write_text(
            json.dumps([dataclasses.asdict(p) for p in points], indent=1))
        (out / "table.md").write_text(table(points))
    plot(points, out)
    return points


def table(points: list[Point]) -> str:
    """Per model: rows criterion/scope, columns settings; accuracy (sparsity of all weights)."""
    lines = ["Made by `python tools/bench_sparsity_accuracy.py --out "
             "tools/results/sparsity_accuracy/` (512 calibration images from the training set, "
             "seed 0; OBS sequential, damp 0.01, 8192 rows per layer; 'no correction' is plain "
             "SparseGPT, "
             "the default `correct=true` prunes each layer's weight refit to the dense model's "
             "outputs from the already sparsified inputs).\n",
             "Test accuracy on the 10,000 MNIST test images, no fine-tuning; in brackets the "
             "sparsity of all Conv/Gemm/MatMul weights (the first and last weighted layers stay "
             "dense, so 50 % of the sparsified layers is a little less overall) and the output "
             "error (Frobenius-relative, vs the dense model on the calibration images)."]
    for name in MODELS:
        rows = [p for p in points if p.model == name]
        if not rows:
            continue
        dense = next(p.accuracy for p in rows if p.method == "dense")
        lines += [f"\n### {name} (dense accuracy {dense:.4f})\n",
                  "| method | " + " | ".join(SETTINGS) + " |",
                  "|---|" + "---:|" * len(SETTINGS)]
        for label, *_ in METHODS:
            cells = []
            for setting in SETTINGS:
                p = next((q for q in rows if q.method == label and q.setting == setting), None)
                cells.append("-" if p is None else f"**{p.accuracy:.4f}** "
                             f"({p.sparsity_all:.2f}, err {p.output_rel_error:.2f})")
            if any(c != "-" for c in cells):
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(points: list[Point], out: Path) -> None:
    """Accuracy vs sparsity of all weights, one panel per model, one line per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (pip install -e '.[bench]')")
        return
    names = [n for n in MODELS if any(p.model == n for p in points)]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.5), squeeze=False)
    styles = dict(zip([m[0] for m in METHODS], [("black", "--"), ("tab:red", ":"),
                                                ("tab:orange", "-."), ("tab:blue", "-"),
                                                ("tab:green", "-")], strict=True))
    for ax, name in zip(axes[0], names, strict=True):
        rows = [p for p in points if p.model == name]
        dense = next(p.accuracy for p in rows if p.method == "dense")
        for label, (color, style) in styles.items():
            pts = sorted((p.sparsity_all, p.accuracy) for p in rows
                         if p.method == label and p.setting != "2:4")
            if pts:
                ax.plot(*zip(*pts, strict=True), style, marker="o", color=color, label=label)
            for p in (q for q in rows if q.method == label and q.setting == "2:4"):
                ax.scatter([p.sparsity_all], [p.accuracy], marker="s", color=color, s=40,
                           label=f"{label.split(' /')[0]} 2:4")
        finish_accuracy_axes(ax, name, dense, "sparsity of all Conv/Gemm/MatMul weights")
    save_figure(fig, out / "accuracy_vs_sparsity.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path(__file__).parent / "models")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--calib-samples", type=int, default=512)
    parser.add_argument("--model-names", default=",".join(MODELS))
    parser.add_argument("--methods", default=";".join(m[0] for m in METHODS),
                        help="';'-separated method labels (default: all)")
    parser.add_argument("--replot", type=Path, help="only redraw table and plot from a "
                        "results.json of an earlier run")
    args = parser.parse_args()
    if args.replot:
        points = [Point(**p) for p in json.loads(args.replot.read_text())]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(table(points))
        plot(points, args.out)
    else:
        run(args.models, args.out, args.calib_samples, tuple(args.model_names.split(",")),
            tuple(args.methods.split(";")))
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
