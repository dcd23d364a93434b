"""Export weight-stripped ONNX graphs of torchvision architectures as test fixtures.

Why: the compression passes (channel analysis, pruning, sparsification) must be
exercised on real-world graph topologies -- depthwise/grouped convs, squeeze-excite,
channel shuffle, inception concats, LayerNorm blocks, Resize heads -- without
committing hundreds of megabytes of weights or needing torch at test time. This
script exports each architecture once with torch, then replaces every large float
initializer by a ``ConstantOfShape`` placeholder, leaving a file of 15-150 KB that
keeps every op, attribute and (in value_info) every inferred shape.

Placeholder convention (the same as ``onnx/backend/test/data/light/*.onnx``, so one
loader fills both): a FLOAT initializer ``W`` with more than 16 elements is removed
and produced instead by a node ``ConstantOfShape(W__SHAPE) -> W`` placed at the
start of ``graph.node``, where ``W__SHAPE`` is an int64 1-D initializer holding
W's dims and the node's ``value`` attribute is a 1-element float tensor (0.0 here;
the light zoo uses 0.02, and being IR 3 also lists ``W__SHAPE`` in graph.input, so a
loader must key on the structure, not the value). All other initializers are kept.

Run (needs torch, torchvision, onnx and onnxruntime; never downloads weights)::

    /work/tvenv/bin/python tools/export_torchvision_zoo.py --out tests/fixtures/torchvision

``--verify`` (default on) proves the convention round-trips: the placeholders of the
stripped file are filled back with the exported weights and onnxruntime's output is
compared to torch's.
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from torch import nn
from torchvision import models
from torchvision.models import segmentation

from compress_ir.frontends.placeholders import restore_weights, strip_weights

OPSET = 17
MAX_REL_ERR = 1e-4
CLASSIFIER_INPUT = (1, 3, 224, 224)
SEGMENTATION_INPUT = (1, 3, 160, 160)


class SegmentationOut(nn.Module):
    """Return only the ``out`` tensor so the ONNX graph has one plain output."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


@dataclass(frozen=True)
class Arch:
    """How to build one architecture (random init, never pretrained) and what to feed it."""

    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...] = CLASSIFIER_INPUT


ARCHITECTURES: dict[str, Arch] = {
    "mobilenet_v2": Arch(lambda: models.mobilenet_v2(weights=None)),
    "mobilenet_v3_small": Arch(lambda: models.mobilenet_v3_small(weights=None)),
    "efficientnet_b0": Arch(lambda: models.efficientnet_b0(weights=None)),
    "resnext50_32x4d": Arch(lambda: models.resnext50_32x4d(weights=None)),
    "regnet_x_400mf": Arch(lambda: models.regnet_x_400mf(weights=None)),
    "shufflenet_v2_x0_5": Arch(lambda: models.shufflenet_v2_x0_5(weights=None)),
    "googlenet": Arch(lambda: models.googlenet(weights=None, aux_logits=False, init_weights=True)),
    "convnext_tiny": Arch(lambda: models.convnext_tiny(weights=None)),
    "resnet50": Arch(lambda: models.resnet50(weights=None)),
    "resnet18": Arch(lambda: models.resnet18(weights=None)),
    "lraspp_mobilenet_v3_large": Arch(
        lambda: SegmentationOut(
            segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)
        ),
        SEGMENTATION_INPUT,
    ),
}


@torch.no_grad()
def randomize_constant_tensors(model: nn.Module, generator: torch.Generator) -> None:
    """Perturb every float parameter/buffer whose elements are all equal.

    torchvision's fresh init leaves BN statistics/affines and many biases constant
    (zeros/ones). After the exporter folds BN into Conv, the resulting identical
    bias tensors get deduplicated into shared initializers plus ``Identity`` nodes,
    which would couple otherwise independent layers in the fixture and make the
    round-trip check blind to swapped weights. A +-10% (or +-0.1) jitter prevents it;
    running variances stay positive.
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        if not tensor.is_floating_point() or tensor.numel() < 2:
            continue
        flat = tensor.reshape(-1)
        if bool((flat == flat[0]).all()):
            scale = max(abs(float(flat[0])), 1.0) * 0.1
            noise = torch.rand(tensor.shape, generator=generator) * 2 - 1
            tensor.add_(noise.to(tensor.dtype) * scale)


def export(model: nn.Module, x: torch.Tensor) -> onnx.ModelProto:
    """Export with the TorchScript exporter and attach inferred shapes to value_info."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # dynamo=False pins the TorchScript exporter on purpose; silence its deprecation notice.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (x,),
            buf,
            dynamo=False,
            opset_version=OPSET,
            do_constant_folding=True,
            input_names=["input"],
            output_names=["output"],
        )
    # data_prop resolves shapes that flow through Shape/Slice/Concat (e.g. Resize sizes).
    exported = onnx.shape_inference.infer_shapes(
        onnx.load_from_string(buf.getvalue()), data_prop=True
    )
    onnx.checker.check_model(exported)
    return exported


def run_onnx(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Run a model on CPU with onnxruntime, graph optimizations off to test the graph as is."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    return session.run(None, {"input": x})[0]


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference scaled by the largest reference magnitude."""
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-12))


def op_types(model: onnx.ModelProto) -> list[str]:
    """Sorted distinct op types of the main graph."""
    return sorted({n.op_type for n in model.graph.node})


def process(name: str, arch: Arch, out_dir: Path, verify: bool) -> list[str]:
    """Export, strip, save and optionally verify one architecture; return a table row."""
    torch.manual_seed(0)  # the constructors draw their random init from the global RNG
    model = arch.build().eval()
    generator = torch.Generator().manual_seed(0)
    randomize_constant_tensors(model, generator)
    x = torch.randn(*arch.input_shape, generator=generator)
    exported = export(model, x)
    stripped, weights = strip_weights(exported)
    path = out_dir / f"{name}.onnx"
    onnx.save(stripped, str(path))

    err = "-"
    if verify:
        with torch.no_grad():
            expected = model(x).numpy()
        actual = run_onnx(restore_weights(onnx.load(str(path)), weights), x.numpy())
        rel = relative_error(actual, expected)
        if not rel <= MAX_REL_ERR:  # also catches NaN
            raise AssertionError(f"{name}: relative error {rel:.3g} > {MAX_REL_ERR}")
        err = f"{rel:.2e}"
    return [
        name,
        f"{path.stat().st_size / 1024:.1f}",
        str(len(stripped.graph.node) - len(weights)),
        str(len(weights)),
        err,
        " ".join(op_types(stripped)),
    ]


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """Print rows as an aligned plain-text table (last column left unpadded)."""
    header = ["model", "KB", "compute nodes", "placeholders", "max rel err", "op types"]
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


def main(argv: Sequence[str] | None = None) -> int:
    """Export the selected architectures into ``--out`` and print a summary table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/torchvision"))
    parser.add_argument(
        "--models", nargs="+", choices=sorted(ARCHITECTURES), default=list(ARCHITECTURES)
    )
    parser.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refill placeholders and compare onnxruntime against torch (default: on)",
    )
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"onnx {onnx.__version__}, onnxruntime {ort.__version__}, opset {OPSET}"
    )
    rows = [process(name, ARCHITECTURES[name], args.out, args.verify) for name in args.models]
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
