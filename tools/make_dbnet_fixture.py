"""Export a small DBNet-style text detector with dynamic batch, H and W (weight-stripped).

Why: real detectors (PaddleOCR's DBNet, exported by paddle2onnx or torch) take
images of any size, so every spatial dim is symbolic. The checks, MACs and
calibration defaults must then run at a stated size (`--input-shape x=1,3,640,640`)
instead of 1x1 pixels. This fixture has the parts that matter: a Conv+BN+ReLU
backbone at strides 2..16, an FPN-style neck (1x1 laterals, nearest upsampling,
add, 3x3 smoothing, upsample every level to 1/4 and concat), and the DB head
(probability and threshold maps through ConvTranspose x2 and Sigmoid, and the
approximate binary map sigmoid(k * (P - T)) with k = 50).

Run (needs torch, torchvision for the shared weight stripper, onnx, onnxruntime)::

    /work/venvs/tv/bin/python tools/make_dbnet_fixture.py --out tests/fixtures/shapes

Weights are random (fixed seed) and stripped with `strip_weights` from
`export_torchvision_zoo.py` (same placeholder convention as the other fixtures).
The export is checked: the refilled file matches torch at 64x96 and 160x128.
"""

from __future__ import annotations

import argparse
import io
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_torchvision_zoo import randomize_constant_tensors, relative_error  # noqa: E402

from compress_ir.frontends.placeholders import restore_weights, strip_weights  # noqa: E402

OPSET = 13
MAX_REL_ERR = 1e-4


def cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class DBNetTiny(nn.Module):
    """Backbone (4 stages) + FPN neck + DB head, in the shape of PaddleOCR's det model."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 24, 32), inner: int = 16,
                 k: float = 50.0) -> None:
        super().__init__()
        self.stem = cbr(3, widths[0], 2)
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(cbr(cin, w, 2 if i else 2), cbr(w, w)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.lateral = nn.ModuleList(nn.Conv2d(w, inner, 1, bias=False) for w in widths)
        self.smooth = nn.ModuleList(nn.Conv2d(inner, inner // 4, 3, padding=1, bias=False)
                                    for _ in widths)
        self.k = k

        def head() -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inner, inner // 4, 3, padding=1, bias=False),
                nn.BatchNorm2d(inner // 4), nn.ReLU(),
                nn.ConvTranspose2d(inner // 4, inner // 4, 2, 2), nn.BatchNorm2d(inner // 4),
                nn.ReLU(), nn.ConvTranspose2d(inner // 4, 1, 2, 2), nn.Sigmoid())

        self.prob, self.thresh = head(), head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats, h = [], self.stem(x)
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2.0, mode="nearest")
        outs = [conv(t) for conv, t in zip(self.smooth, lat, strict=True)]
        outs = [outs[0]] + [F.interpolate(o, scale_factor=2.0 ** i, mode="nearest")
                            for i, o in enumerate(outs[1:], start=1)]
        fuse = torch.cat(outs[::-1], dim=1)
        p, t = self.prob(fuse), self.thresh(fuse)
        binary = torch.sigmoid(self.k * (p - t))
        return torch.cat([p, t, binary], dim=1)


def export(model: nn.Module) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), buf, dynamo=False,
                          opset_version=OPSET, do_constant_folding=True,
                          input_names=["x"], output_names=["maps"],
                          dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"},
                                        "maps": {0: "batch", 2: "height", 3: "width"}})
    exported = onnx.load_from_string(buf.getvalue())
    onnx.checker.check_model(exported)
    return exported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/shapes"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = DBNetTiny().eval()
    randomize_constant_tensors(model, torch.Generator().manual_seed(0))
    stripped, weights = strip_weights(export(model))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "dbnet_dynamic_hw.onnx"
    onnx.save(stripped, str(path))
    import onnxruntime as ort

    sess = ort.InferenceSession(restore_weights(stripped, weights).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    for h, w in ((64, 96), (160, 128)):
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            want = model(x).numpy()
        got = sess.run(None, {"x": x.numpy()})[0]
        err = relative_error(got, want)
        if not err <= MAX_REL_ERR:
            raise AssertionError(f"{h}x{w}: relative error {err:.3g} > {MAX_REL_ERR}")
        print(f"{h}x{w}: onnxruntime vs torch rel. error {err:.2e}")
    print(f"{path}: {path.stat().st_size / 1024:.1f} KB, {len(stripped.graph.node)} nodes, "
          f"{len(weights)} placeholders, outputs {np.shape(got)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
