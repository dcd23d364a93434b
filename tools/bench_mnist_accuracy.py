"""Accuracy of pruning methods on real data (MNIST), without fine-tuning.

Why: compress-ir's value over a plain L1 pruner is choosing *which* channels to drop
and *how many per layer* so accuracy survives without retraining. This benchmark
measures that on three trained MNIST models (`tools/models/mnist_*.onnx`, made by
`tools/train_mnist_models.py`): for every criterion and allocation, the test accuracy
at 25 / 50 / 70 % MACs reduction, with and without `reconstruct`, against baselines
at equal MACs: plain L1 uniform, and onnxsim's `apply_structured_pruning` where it
can run. Equal MACs: the prune ratio is found by bisection so that the MACs
reduction reaches the target (the achieved ratio is printed next to each figure).

    pip install -e '.[bench]'
    python tools/bench_mnist_accuracy.py --out bench_out/   # table.md, results.json, PNGs

Calibration: 512 training images (`--calib-samples`); evaluation: the 10,000 test images.
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

import compress_ir.passes  # noqa: E402,F401
from compress_ir.api import compress  # noqa: E402
from compress_ir.core.calibration import CalibrationSet  # noqa: E402
from compress_ir.core.metrics import model_metrics  # noqa: E402
from compress_ir.passes.analysis.importance import CRITERIA, Criterion  # noqa: E402

MODELS = ("mnist_plain_cnn", "mnist_resnet", "mnist_mobilenet")
TARGETS = (0.25, 0.5, 0.7)  # fraction of MACs removed
SCOPES = ("uniform", "global")


@dataclasses.dataclass
class Point:
    model: str
    method: str
    target: float
    macs_reduction: float
    accuracy: float
    seconds: float
    note: str = ""


def accuracy(proto: onnx.ModelProto, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for start in range(0, len(images), 1000):
        logits = sess.run(None, {name: images[start : start + 1000]})[0]
        correct += int((logits.argmax(1) == labels[start : start + 1000]).sum())
    return correct / len(images)


def _reduction(proto: onnx.ModelProto, base_macs: int) -> float:
    return 1.0 - model_metrics(proto)["macs"] / base_macs


_SCORES: dict[tuple[str, int], np.ndarray] = {}


def cached_criterion(criterion: str, model_key: str) -> str:
    """Register (once) a criterion that memoises `criterion`'s scores for one model.

    Scores do not depend on the prune ratio, so the ratio bisection and the
    reconstruct variant reuse them instead of re-capturing calibration data.
    """
    name = f"bench-{model_key}-{criterion}".replace("_", "-")
    if name in CRITERIA:
        return name
    inner_cls = CRITERIA.get(criterion)

    class Cached(Criterion):
        needs_calibration = inner_cls.needs_calibration

        def __init__(self) -> None:
            self.inner = inner_cls()

        def score(self, group, ctx):  # noqa: ANN001, ANN201 - Criterion's signature
            key = (name, group.index)
            if key not in _SCORES:
                _SCORES[key] = self.inner.score(group, ctx)
            return _SCORES[key]

        def compensate(self, ctx, removed_units):  # noqa: ANN001, ANN201
            return self.inner.compensate(ctx, removed_units)

    CRITERIA.register(name)(Cached)
    return name


RECONSTRUCT = ["reconstruct"]  # the reconstruct pass spec (--reconstruct)


def _prune(model: onnx.ModelProto, spec: str, calib: CalibrationSet, rec: bool) -> onnx.ModelProto:
    pipeline = [spec] + (RECONSTRUCT[:1] if rec else [])
    return compress(model, pipeline, check=False, calibration=calib).model


def _bisect(fn, target: float, base_macs: int, lo: float = 0.0, hi: float = 0.95, steps: int = 6):
    """Smallest tried parameter whose MACs reduction reaches `target` (monotone search)."""
    best = None
    for _ in range(steps):
        mid = (lo + hi) / 2
        proto = fn(mid)
        got = _reduction(proto, base_macs)
        if got >= target:
            best, hi = (mid, proto, got), mid
        else:
            lo = mid
    if best is None:  # not reachable: report the most aggressive setting
        proto = fn(hi)
        best = (hi, proto, _reduction(proto, base_macs))
    return best


def _onnxsim(model: onnx.ModelProto, sparsity: float) -> onnx.ModelProto:
    from onnxsim import apply_structured_pruning

    return apply_structured_pruning(model, sparsity=sparsity)


class Bench:
    """One model: dense reference, calibration, and the points measured on it."""

    def __init__(self, name: str, model: onnx.ModelProto, calib: CalibrationSet,
                 images: np.ndarray, labels: np.ndarray) -> None:
        self.name, self.model, self.calib = name, model, calib
        self.images, self.labels = images, labels
        self.base_macs = model_metrics(model)["macs"]
        self.points: list[Point] = []

    def record(self, method: str, target: float, make, rec_too: bool, note: str = "") -> None:
        """Evaluate `make(rec) -> (proto, note)` without (and maybe with) reconstruct."""
        for rec in (False, True) if rec_too else (False,):
            t0 = time.perf_counter()
            try:
                proto, extra = make(rec)
                got = _reduction(proto, self.base_macs)
                acc = accuracy(proto, self.images, self.labels)
                text = " ".join(x for x in (note, extra) if x)
            except Exception as exc:  # noqa: BLE001 - a method that cannot run is reported
                got, acc, text = float("nan"), float("nan"), f"failed: {exc}"[:160]
            label = method + ("+reconstruct" if rec else "")
            self.points.append(Point(self.name, label, target, got, acc,
                                     time.perf_counter() - t0, text))
            print(f"  -{target:.2f} {label:34s} acc {acc:.4f}  MACs -{got:.3f}  {text}",
                  flush=True)

    def prune(self, spec: str, rec: bool = False) -> onnx.ModelProto:
        return _prune(self.model, spec, self.calib, rec)

    def bisect(self, make_spec, target: float) -> tuple[float, onnx.ModelProto, float]:
        return _bisect(lambda x: self.prune(make_spec(x)), target, self.base_macs)

    def evaluate(self, target: float, cached: dict[str, str], rec_too: bool) -> None:
        """Every criterion x allocation (and onnxsim) at one MACs-reduction target."""
        # uniform: the MACs of a ratio do not depend on the criterion -> one bisection
        ratio, _, _ = self.bisect(lambda r: f"channel-prune{{ratio={r:.4f},criterion=l1}}",
                                  target)
        for crit, cname in cached.items():
            spec = f"channel-prune{{ratio={ratio:.4f},criterion={cname}}}"
            self.record(f"{crit}/uniform", target, lambda rec, sp=spec: (self.prune(sp, rec), ""),
                        rec_too or crit == "l1", f"ratio {ratio:.3f}")
        for crit, cname in cached.items():
            def make_global(rec: bool, c: str = cname) -> tuple[onnx.ModelProto, str]:
                def spec(x: float) -> str:
                    return f"channel-prune{{ratio={x:.4f},criterion={c},scope=global}}"
                r, proto, _ = self.bisect(spec, target)
                return (self.prune(spec(r), True) if rec else proto), f"ratio {r:.3f}"
            self.record(f"{crit}/global", target, make_global, False)
        for crit, cname in cached.items():
            spec = f"channel-prune{{criterion={cname},target-macs={1 - target:.4f}}}"
            self.record(f"{crit}/target-macs", target,
                        lambda rec, sp=spec: (self.prune(sp, rec), ""), rec_too)

        def make_onnxsim(rec: bool) -> tuple[onnx.ModelProto, str]:
            sparsity, proto, got = _bisect(lambda x: _onnxsim(self.model, x), target,
                                           self.base_macs)
            reached = "" if got >= target - 1e-3 else " (cannot reach the target)"
            return proto, f"sparsity {sparsity:.3f}{reached}"
        self.record("onnxsim.apply_structured_pruning", target, make_onnxsim, False)


def run(models_dir: Path, out: Path, criteria: list[str], calib_samples: int,
        rec_targets: tuple[float, ...], names: tuple[str, ...] = MODELS) -> list[Point]:
    images, labels = load_mnist("test")
    train, _ = load_mnist("train")
    rng = np.random.default_rng(0)
    calib = CalibrationSet(
        {"input": train[rng.choice(len(train), calib_samples, replace=False)]}, "mnist-train"
    )
    points: list[Point] = []
    for name in names:
        model = onnx.load(models_dir / f"{name}.onnx")
        bench = Bench(name, model, calib, images, labels)
        dense = accuracy(model, images, labels)
        bench.points.append(Point(name, "dense", 0.0, 0.0, dense, 0.0))
        print(f"\n{name}: dense accuracy {dense:.4f}, {bench.base_macs / 1e6:.2f}M MACs",
              flush=True)
        cached = {c: cached_criterion(c, name) for c in criteria}
        for target in TARGETS:
            bench.evaluate(target, cached, target in rec_targets)
        points += bench.points
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(
            json.dumps([dataclasses.asdict(p) for p in points], indent=1))
        (out / "table.md").write_text(table(points))
    plot(points, out)
    return points


def table(points: list[Point]) -> str:
    """One markdown table per model: method x target, accuracy (achieved MACs reduction)."""
    lines = []
    for name in MODELS:
        rows = [p for p in points if p.model == name]
        if not rows:
            continue
        dense = next(p.accuracy for p in rows if p.method == "dense")
        lines += [f"\n### {name} (dense accuracy {dense:.4f})\n",
                  "| method | " + " | ".join(f"-{int(t * 100)}% MACs" for t in TARGETS) + " |",
                  "|---|" + "---:|" * len(TARGETS)]
        methods = list(dict.fromkeys(p.method for p in rows if p.method != "dense"))
        for method in methods:
            cells = []
            for t in TARGETS:
                p = next((q for q in rows if q.method == method and q.target == t), None)
                cells.append("-" if p is None or p.accuracy != p.accuracy else
                             f"{p.accuracy:.4f} ({-p.macs_reduction:+.2f})")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _best(rows: list[Point], target: float, reconstructed: bool) -> str | None:
    pool = [p for p in rows if p.target == target and p.accuracy == p.accuracy
            and p.method.endswith("+reconstruct") == reconstructed
            and not p.method.startswith("onnxsim")]
    return max(pool, key=lambda p: p.accuracy).method if pool else None


def plot(points: list[Point], out: Path) -> None:
    """Per model: every setting as a grey dot; baselines and the best settings as lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (pip install -e '.[bench]')")
        return
    names = [n for n in MODELS if any(p.model == n for p in points)]
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [p for p in points if p.model == name and p.accuracy == p.accuracy]
        dense = next(p.accuracy for p in rows if p.method == "dense")
        rows = [p for p in rows if p.method != "dense"]
        ax.scatter([p.macs_reduction for p in rows], [p.accuracy for p in rows], s=8,
                   color="0.75", label="every criterion x allocation", zorder=1)
        highlight = {"l1/uniform": ("black", "--"),
                     "onnxsim.apply_structured_pruning": ("tab:red", ":"),
                     "l1/uniform+reconstruct": ("tab:blue", "-")}
        best = _best(rows, 0.5, False)
        best_rec = _best(rows, 0.5, True)
        if best:
            highlight.setdefault(best, ("tab:green", "-"))
        if best_rec:
            highlight.setdefault(best_rec, ("tab:purple", "-"))
        for method, (color, style) in highlight.items():
            pts = sorted((p.macs_reduction, p.accuracy) for p in rows if p.method == method)
            if pts:
                tag = " (best at -50%)" if method in (best, best_rec) else ""
                ax.plot(*zip(*pts, strict=True), style, marker="o", color=color, lw=2,
                        label=method + tag, zorder=2)
        finish_accuracy_axes(ax, name, dense, "MACs reduction")
    save_figure(fig, out / "accuracy_vs_macs.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path(__file__).parent / "models")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--criteria", default=",".join(n for n in CRITERIA.names()
                                                        if not n.startswith("bench-")),
                        help="comma list (default: every registered criterion)")
    parser.add_argument("--calib-samples", type=int, default=512)
    parser.add_argument("--replot", type=Path, help="only redraw table and plot from a "
                        "results.json of an earlier run")
    parser.add_argument("--model-names", default=",".join(MODELS),
                        help=f"comma list of models in --models (default {','.join(MODELS)})")
    parser.add_argument("--reconstruct-at", default="0.5",
                        help="comma list of targets evaluated also with reconstruct for every "
                             "criterion (l1/uniform always); '' for none")
    parser.add_argument("--reconstruct", default="reconstruct",
                        help="the reconstruct pass spec, e.g. 'reconstruct{inputs=original}'")
    args = parser.parse_args()
    RECONSTRUCT[0] = args.reconstruct
    if args.replot:
        points = [Point(**p) for p in json.loads(args.replot.read_text())]
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "table.md").write_text(table(points))
        plot(points, args.out)
        print((args.out / "table.md").read_text())
        return
    rec_targets = tuple(float(t) for t in args.reconstruct_at.split(",") if t)
    run(args.models, args.out, args.criteria.split(","), args.calib_samples, rec_targets,
        tuple(args.model_names.split(",")))
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
