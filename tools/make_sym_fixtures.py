"""Export the real torch graphs behind the symbolic-shape tests (tests/fixtures/sym/).

Why: torch writes shape arithmetic that hand-built graphs only imitate --
`x.view(x.size(0), -1)` becomes `Shape -> Gather -> Unsqueeze -> Concat -> Reshape`
in the TorchScript exporter (`dynamo=False`) and `Reshape(x, [-1, 256])` with a
batch dim named by inference in the dynamo exporter; attention's
`view(B, S, heads, head_dim)` builds its target from `Shape`. CI has no torch, so
the exports are committed; the models are tiny, so they keep their (seeded
random) weights: every file is well under 100 KB.

Run (needs torch and, for the dynamo exporter, `pip install -e ".[export]"`)::

    .venv/bin/python tools/make_sym_fixtures.py --out tests/fixtures/sym

Each export is checked against torch in onnxruntime at two batch sizes (and two
sequence lengths) before it is written.
"""

from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

OPSET = 17
MAX_ABS_ERR = 1e-4


class ViewCNN(nn.Module):
    """LeNet-style CNN whose head flattens with `x.view(x.size(0), -1)`."""

    def __init__(self, flatten: str = "view") -> None:
        super().__init__()
        self.flatten = flatten
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        if self.flatten == "view":
            x = x.view(x.size(0), -1)
        elif self.flatten == "flatten":
            x = torch.flatten(x, 1)
        else:  # a literal C*H*W in the reshape constant
            x = x.reshape(-1, 16 * 4 * 4)
        return self.fc(x)


class Attention(nn.Module):
    """One self-attention block with a feed-forward head (hidden 32, 4 heads of 8)."""

    def __init__(self, hidden: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.q, self.k, self.v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.out = nn.Linear(hidden, hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, 24), nn.Linear(24, 6)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        b, s = t.size(0), t.size(1)
        return t.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s = x.size(0), x.size(1)
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / self.head_dim ** 0.5, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, s, self.heads * self.head_dim)
        return self.fc2(torch.relu(self.fc1(self.out(y))))


def _export(model: nn.Module, example: torch.Tensor, dynamo: bool, dynamic: dict) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = {"x": {i: torch.export.Dim(n, min=1, max=64) for i, n in dynamic.items()}}
            program = torch.onnx.export(
                model, (example,), dynamo=True, input_names=["x"], output_names=["y"],
                dynamic_shapes=shapes or None, opset_version=max(OPSET, 18), verbose=False)
            return program.model_proto.SerializeToString()
        axes = {"x": dynamic, "y": {i: n for i, n in dynamic.items() if i < 2}} if dynamic \
            else None
        torch.onnx.export(model, (example,), buf, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes=axes, opset_version=OPSET)
    return buf.getvalue()


def _check(data: bytes, model: nn.Module, inputs: list[torch.Tensor], name: str) -> None:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    for x in inputs:
        want = model(x).detach().numpy()
        got = session.run(None, {"x": x.numpy()})[0]
        err = float(np.abs(got - want).max())
        if err > MAX_ABS_ERR:
            raise SystemExit(f"{name}: onnxruntime differs from torch by {err:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/sym"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cnn = {kind: ViewCNN(kind).eval() for kind in ("view", "flatten", "literal")}
    for kind in ("flatten", "literal"):
        cnn[kind].load_state_dict(cnn["view"].state_dict())
    attention = Attention().eval()
    img = [torch.randn(n, 1, 8, 8) for n in (1, 3)]
    seq = [torch.randn(n, s, 32) for n, s in ((1, 5), (2, 7))]
    jobs = [
        ("cnn_view_static_ts", cnn["view"], img[:1], False, {}),
        ("cnn_view_dynbatch_ts", cnn["view"], img, False, {0: "N"}),
        ("cnn_view_dynbatch_dynamo", cnn["view"], img, True, {0: "batch"}),
        ("cnn_flatten_dynbatch_ts", cnn["flatten"], img, False, {0: "N"}),
        ("cnn_literal_dynbatch_ts", cnn["literal"], img, False, {0: "N"}),
        ("attention_dyn_ts", attention, seq, False, {0: "B", 1: "S"}),
        ("attention_dyn_dynamo", attention, seq, True, {0: "batch", 1: "seq"}),
    ]
    for name, model, inputs, dynamo, dynamic in jobs:
        with torch.no_grad():
            data = _export(model, inputs[-1] if dynamic else inputs[0], dynamo, dynamic)
            _check(data, model, inputs if dynamic else inputs[:1], name)
        proto = onnx.load_from_string(data)
        proto.doc_string = f"tools/make_sym_fixtures.py: {name}"
        path = args.out / f"{name}.onnx"
        onnx.save(proto, path)
        print(f"{path}: {path.stat().st_size / 1024:.1f} KB, "
              f"{len(proto.graph.node)} nodes, opset {proto.opset_import[0].version}")


if __name__ == "__main__":
    main()
