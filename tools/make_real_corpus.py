"""Export the corpus of real-world ONNX exports (issue 9) as weight-stripped fixtures.

Why: users hand the tool what their exporter wrote -- dynamic batch/sequence/H×W
dims, ``Shape -> Gather -> Concat -> Reshape`` flatten chains, the new dynamo
exporter's graphs, ``transformers`` attention blocks, weights as ``Constant``
nodes (paddle2onnx), old opsets. Hand-built test graphs never look like that.
This script exports small versions of such models with the exporters users run
and strips their weights with the placeholder convention of
``tests/fixtures/torchvision`` (``frontends/placeholders.py``: ``strip_weights``
writes, ``restore_weights`` proves the round trip, ``fill_placeholders`` fills
seeded random weights in the tests), so each file stays a few KB to ~100 KB and
the tests need no torch.

Every export is verified (``--verify``, on by default): the stripped file refilled
with the exported weights must match the source framework in onnxruntime, at the
export shape *and* at a second shape for each dynamic dim (which proves the dims
really are dynamic). Nothing is downloaded: ``transformers`` models are built
from tiny config objects with random weights.

Families need different environments (run each group with its own python):

- main venv (torch 2.13 + ``pip install -e ".[corpus]"``): mnist_*, dbnet, yolo,
  segnet, paddle_*, bert, vit, gpt2, llama
- torchvision venv (torch 2.14.1, torchvision, timm; ``pip install -e . --no-deps``
  plus onnx-graphsurgeon and networkx): timm_*
- tensorflow venv (tensorflow-cpu, tf2onnx; same editable install): keras_*
- paddle venv (paddlepaddle, paddle2onnx, which wants onnx<=1.17): paddle2onnx_*

::

    .venv/bin/python tools/make_real_corpus.py                       # main-venv models
    /work/venvs/tv/bin/python tools/make_real_corpus.py --models timm_resnet timm_mobilevit
    /work/venvs/corpus-tf/bin/python tools/make_real_corpus.py --models keras_cnn
    /work/venvs/corpus-paddle/bin/python tools/make_real_corpus.py --models paddle2onnx_ocr_det

The table in ``tests/fixtures/real/README.md`` is written by hand from the
printed summary.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from compress_ir.frontends.placeholders import restore_weights, strip_weights

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "real"
MAX_REL_ERR = 1e-4


@dataclass
class Export:
    """What one exporter run produced: the ONNX proto and how to feed/compare it."""

    proto: onnx.ModelProto
    # feeds at the export shape and at other values of the dynamic dims
    feeds: list[dict[str, np.ndarray]]
    # reference outputs of the source framework, one list per feed
    expected: list[list[np.ndarray]]
    note: str = ""


@dataclass(frozen=True)
class Spec:
    """One fixture: a builder returning an `Export`, and the README facts about it."""

    build: Callable[[], Export]
    source: str
    exercises: str
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- torch helpers


def _torch() -> Any:
    import torch

    return torch


def _seeded(seed: int = 0) -> Any:
    torch = _torch()
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _jitter_constants(model: Any, generator: Any) -> None:
    """Perturb float tensors whose elements are all equal (fresh BN stats, zero biases).

    Otherwise the exporter deduplicates identical tensors into shared initializers
    and ``Identity`` nodes, coupling independent layers (see export_torchvision_zoo).
    """
    torch = _torch()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if not tensor.is_floating_point() or tensor.numel() < 2:
                continue
            flat = tensor.reshape(-1)
            if bool((flat == flat[0]).all()):
                scale = max(abs(float(flat[0])), 1.0) * 0.1
                noise = torch.rand(tensor.shape, generator=generator) * 2 - 1
                tensor.add_(noise.to(tensor.dtype) * scale)


def _varargs(model: Any) -> bool:
    import inspect

    params = inspect.signature(model.forward).parameters.values()
    return any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)


def _ident(name: str) -> str:
    """torch.export.Dim names must be identifiers."""
    return "".join(c if c.isalnum() else "_" for c in name)


def _outputs(result: Any) -> list[Any]:
    torch = _torch()
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, dict):
        return [v for v in result.values() if isinstance(v, torch.Tensor)]
    return [r for r in result if isinstance(r, torch.Tensor)]


def torch_export(
    model: Any,
    inputs: dict[str, Any],
    other_inputs: list[dict[str, Any]],
    output_names: list[str],
    *,
    dynamo: bool,
    opset: int,
    dynamic_axes: dict[str, dict[int, str]] | None = None,
    tracing: Callable[[], Any] | None = None,
) -> Export:
    """Export `model` like a user would and record torch's outputs for every feed.

    TorchScript (``dynamo=False``) takes ``dynamic_axes``; the dynamo exporter gets
    the same dims as ``dynamic_shapes`` (``torch.export.Dim`` per named dim).
    ``tracing`` is a context manager entered around the export only (not around the
    reference run).
    """
    torch = _torch()
    model = model.eval()
    names = list(inputs)
    args = tuple(inputs.values())
    buf = io.BytesIO()
    with warnings.catch_warnings(), (tracing or contextlib.nullcontext)():
        warnings.simplefilter("ignore")
        if dynamo:
            dims: dict[str, Any] = {}
            shapes = None
            if dynamic_axes:  # positional, like `args`
                shapes = tuple(
                    {i: dims.setdefault(d, torch.export.Dim(_ident(d), min=2, max=4096))
                     for i, d in dynamic_axes.get(name, {}).items()} or None
                    for name in names)
                if _varargs(model):  # forward(*args): one entry holding the tuple
                    shapes = (shapes,)
            program = torch.onnx.export(
                model, args, dynamo=True, opset_version=opset, input_names=names,
                output_names=output_names, dynamic_shapes=shapes, verbose=False,
            )
            program.save(buf)
        else:
            torch.onnx.export(
                model, args, buf, dynamo=False, opset_version=opset,
                do_constant_folding=True, input_names=names, output_names=output_names,
                dynamic_axes=dynamic_axes,
            )
    proto = onnx.load_from_string(buf.getvalue())
    feeds, expected = [], []
    with torch.no_grad():
        for feed in [inputs, *other_inputs]:
            expected.append([o.numpy() for o in _outputs(model(*feed.values()))])
            feeds.append({k: v.numpy() for k, v in feed.items()})
    return Export(proto, feeds, expected, note="dynamo" if dynamo else "torchscript")


# ----------------------------------------------------------------------------- CNN family


def _mnist_cnn() -> Any:
    nn = _torch().nn

    class MnistCNN(nn.Module):
        """The classic PyTorch MNIST example net, channels shrunk."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, 1)
            self.conv2 = nn.Conv2d(8, 16, 3, 1)
            self.fc1 = nn.Linear(16 * 12 * 12, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, x: Any) -> Any:
            x = nn.functional.relu(self.conv1(x))
            x = nn.functional.max_pool2d(nn.functional.relu(self.conv2(x)), 2)
            x = x.view(x.size(0), -1)
            x = nn.functional.relu(self.fc1(x))
            return nn.functional.log_softmax(self.fc2(x), dim=1)

    return MnistCNN()


def mnist(dynamo: bool, dynamic: bool) -> Callable[[], Export]:
    """The MNIST CNN with ``x.view(x.size(0), -1)``: both exporters, dynamic or static batch."""

    def build() -> Export:
        g = _seeded()
        model = _mnist_cnn()
        _jitter_constants(model, g)
        torch = _torch()
        x = torch.randn(2 if dynamic else 1, 1, 28, 28, generator=g)
        others = [{"input": torch.randn(5, 1, 28, 28, generator=g)}] if dynamic else []
        axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
        return torch_export(model, {"input": x}, others, ["output"], dynamo=dynamo,
                            opset=18 if dynamo else 13, dynamic_axes=axes)

    return build


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> Any:
    nn = _torch().nn
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


def _dbnet() -> Any:
    nn = _torch().nn
    F = nn.functional

    class DBNet(nn.Module):
        """DBNet-style text detector: 4-stage backbone, FPN, probability-map head."""

        def __init__(self) -> None:
            super().__init__()
            chans = [8, 16, 24, 32]
            self.stem = _conv_bn(3, 8, 2)
            self.stages = nn.ModuleList(
                _conv_bn(a, b, 2) for a, b in zip([8, *chans[:-1]], chans, strict=True))
            self.lateral = nn.ModuleList(nn.Conv2d(c, 16, 1, bias=False) for c in chans)
            self.smooth = nn.ModuleList(nn.Conv2d(16, 4, 3, padding=1, bias=False)
                                        for _ in chans)
            self.head = nn.Sequential(
                nn.Conv2d(16, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                nn.ConvTranspose2d(4, 4, 2, 2), nn.BatchNorm2d(4), nn.ReLU(),
                nn.ConvTranspose2d(4, 1, 2, 2), nn.Sigmoid())

        def forward(self, x: Any) -> Any:
            x = self.stem(x)
            feats = []
            for stage in self.stages:
                x = stage(x)
                feats.append(x)
            lat = [conv(f) for conv, f in zip(self.lateral, feats, strict=True)]
            for i in range(len(lat) - 1, 0, -1):  # top-down: upsample and add
                lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], scale_factor=2.0, mode="nearest")
            outs = [conv(t) for conv, t in zip(self.smooth, lat, strict=True)]
            outs = [outs[0]] + [F.interpolate(o, scale_factor=float(2 ** i), mode="nearest")
                                for i, o in enumerate(outs[1:], 1)]
            return self.head(torch_cat(outs))

    return DBNet()


def torch_cat(tensors: list[Any]) -> Any:
    return _torch().cat(tensors, dim=1)


def dbnet() -> Export:
    g = _seeded()
    model = _dbnet()
    _jitter_constants(model, g)
    torch = _torch()
    x = torch.randn(1, 3, 64, 64, generator=g)
    other = [{"x": torch.randn(1, 3, 96, 128, generator=g)}]
    axes = {"x": {2: "height", 3: "width"}, "maps": {2: "height", 3: "width"}}
    return torch_export(model, {"x": x}, other, ["maps"], dynamo=False, opset=13,
                        dynamic_axes=axes)


def _yolo() -> Any:
    nn = _torch().nn

    class CSP(nn.Module):
        """YOLOv5/v8 C2f-style block: conv, split in two, bottleneck one half, concat."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.cv1 = _conv_bn(c, c, k=1)
            self.m = _conv_bn(c // 2, c // 2)
            self.cv2 = _conv_bn(c + c // 2, c, k=1)

        def forward(self, x: Any) -> Any:
            a, b = self.cv1(x).chunk(2, dim=1)
            return self.cv2(torch_cat([a, b, self.m(b)]))

    class Yolo(nn.Module):
        """Two-scale detector; heads reshape to (N, anchors, 5+classes, H*W) and split."""

        na, nc = 2, 3

        def __init__(self) -> None:
            super().__init__()
            self.stem = _conv_bn(3, 8, 2)
            self.s1 = nn.Sequential(_conv_bn(8, 16, 2), CSP(16))
            self.s2 = nn.Sequential(_conv_bn(16, 24, 2), CSP(24))
            self.heads = nn.ModuleList(nn.Conv2d(c, self.na * (5 + self.nc), 1) for c in (16, 24))

        def forward(self, x: Any) -> Any:
            torch = _torch()
            p1 = self.s1(self.stem(x))
            p2 = self.s2(p1)
            outs = []
            for head, p in zip(self.heads, (p1, p2), strict=True):
                y = head(p)
                bs, _, ny, nx = y.shape
                y = y.view(bs, self.na, 5 + self.nc, ny * nx)
                box, obj, cls = y.split((4, 1, self.nc), dim=2)
                y = torch.cat([box, obj.sigmoid(), cls.sigmoid()], dim=2)
                outs.append(y.permute(0, 1, 3, 2).reshape(bs, -1, 5 + self.nc))
            return torch.cat(outs, dim=1)

    return Yolo()


def yolo() -> Export:
    g = _seeded()
    model = _yolo()
    _jitter_constants(model, g)
    torch = _torch()
    x = torch.randn(1, 3, 64, 64, generator=g)
    other = [{"images": torch.randn(3, 3, 64, 64, generator=g)}]
    axes = {"images": {0: "batch"}, "detections": {0: "batch"}}
    return torch_export(model, {"images": x}, other, ["detections"], dynamo=False, opset=12,
                        dynamic_axes=axes)


def _segnet() -> Any:
    nn = _torch().nn
    F = nn.functional

    class SegNet(nn.Module):
        """U-Net-style segmenter: bilinear Resize to the skip's size and ConvTranspose."""

        def __init__(self) -> None:
            super().__init__()
            self.e1 = _conv_bn(3, 8)
            self.e2 = _conv_bn(8, 16, 2)
            self.e3 = _conv_bn(16, 24, 2)
            self.up3 = nn.ConvTranspose2d(24, 16, 2, 2)
            self.d2 = _conv_bn(32, 16)
            self.d1 = _conv_bn(24, 8)
            self.cls = nn.Conv2d(8, 5, 1)

        def forward(self, x: Any) -> Any:
            torch = _torch()
            s1 = self.e1(x)
            s2 = self.e2(s1)
            y = self.e3(s2)
            y = self.d2(torch.cat([self.up3(y), s2], dim=1))
            y = F.interpolate(y, size=s1.shape[-2:], mode="bilinear", align_corners=False)
            return self.cls(self.d1(torch.cat([y, s1], dim=1)))

    return SegNet()


def segnet() -> Export:
    g = _seeded()
    model = _segnet()
    _jitter_constants(model, g)
    torch = _torch()
    x = torch.randn(1, 3, 32, 32, generator=g)
    other = [{"x": torch.randn(1, 3, 48, 64, generator=g)}]
    axes = {"x": {2: "height", 3: "width"}, "logits": {2: "height", 3: "width"}}
    return torch_export(model, {"x": x}, other, ["logits"], dynamo=True, opset=18,
                        dynamic_axes=axes)


def _ocr_det() -> Any:
    """A PaddleOCR-det-like small net (conv/BN/hardswish backbone, upsample, sigmoid)."""
    nn = _torch().nn

    class OcrDet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.Hardswish(),
                nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.Hardswish(),
                nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(),
                nn.Conv2d(16, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
            self.head = nn.Sequential(nn.Conv2d(16, 8, 3, 1, 1), nn.ReLU(),
                                      nn.Upsample(scale_factor=4.0, mode="nearest"),
                                      nn.Conv2d(8, 1, 1), nn.Sigmoid())

        def forward(self, x: Any) -> Any:
            return self.head(self.body(x))

    return OcrDet()


def paddle_style() -> Export:
    """Torch export at opset 11 rewritten to paddle2onnx's form.

    paddle2onnx writes every weight as a ``Constant`` node (no initializers) and
    names dynamic dims ``p2o.DynamicDimension.N``; the rewrite reproduces both on
    a TorchScript export (paddle2onnx itself is not used, see the README).
    """
    g = _seeded()
    model = _ocr_det()
    _jitter_constants(model, g)
    torch = _torch()
    x = torch.randn(1, 3, 64, 64, generator=g)
    other = [{"x": torch.randn(1, 3, 96, 160, generator=g)}]
    axes = {"x": {0: "p2o.DynamicDimension.0", 2: "p2o.DynamicDimension.1",
                  3: "p2o.DynamicDimension.2"},
            "sigmoid_0.tmp_0": {0: "p2o.DynamicDimension.0", 2: "p2o.DynamicDimension.1",
                                3: "p2o.DynamicDimension.2"}}
    exp = torch_export(model, {"x": x}, other, ["sigmoid_0.tmp_0"], dynamo=False, opset=11,
                       dynamic_axes=axes)
    exp.note = "torchscript, initializers rewritten as Constant nodes"
    return exp


def paddle2onnx_det() -> Export:
    """A PaddleOCR-det-like net written in Paddle and exported by paddle2onnx.

    ``paddle.onnx.export`` with an ``InputSpec`` of ``[None, 3, None, None]`` and
    opset 11, as PaddleOCR's export docs do; random init (``paddle.seed``).
    """
    import tempfile

    import paddle
    from paddle import nn

    paddle.seed(0)

    def cbn(cin: int, cout: int, k: int, stride: int, act: Any, groups: int = 1) -> list:
        return [nn.Conv2D(cin, cout, k, stride, k // 2, groups=groups, bias_attr=False),
                nn.BatchNorm2D(cout), act()]

    model = nn.Sequential(
        *cbn(3, 8, 3, 2, nn.Hardswish), *cbn(8, 8, 3, 1, nn.Hardswish, groups=8),
        *cbn(8, 16, 1, 1, nn.ReLU), *cbn(16, 16, 3, 2, nn.ReLU),
        # PaddleOCR's DBHead: conv-BN-ReLU, two stride-2 Conv2DTranspose, sigmoid (paddle2onnx
        # 2.1.0 with paddle 3.3.1 cannot export interpolate: "the 0th elementwise MUST be
        # ir::FloatAttribute")
        *cbn(16, 4, 3, 1, nn.ReLU), nn.Conv2DTranspose(4, 4, 2, 2), nn.BatchNorm2D(4), nn.ReLU(),
        nn.Conv2DTranspose(4, 1, 2, 2), nn.Sigmoid())
    rng = np.random.default_rng(0)
    for layer in model.sublayers():
        if isinstance(layer, nn.BatchNorm2D):  # fresh stats are constant: jitter them
            for t, lo, hi in ((layer.weight, 0.9, 1.1), (layer.bias, -0.1, 0.1),
                              (layer._mean, -0.1, 0.1), (layer._variance, 0.9, 1.2)):
                t.set_value(rng.uniform(lo, hi, t.shape).astype(np.float32))
    model.eval()
    spec = [paddle.static.InputSpec([None, 3, None, None], "float32", "x")]
    with tempfile.TemporaryDirectory() as tmp:
        paddle.onnx.export(model, f"{tmp}/det", input_spec=spec, opset_version=11)
        proto = onnx.load(f"{tmp}/det.onnx")
    feeds = [{"x": rng.standard_normal(s).astype(np.float32)}
             for s in ((1, 3, 64, 64), (2, 3, 96, 160))]
    expected = [[model(paddle.to_tensor(f["x"])).numpy()] for f in feeds]
    return Export(proto, feeds, expected, note="paddle2onnx")


def initializers_as_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Move every initializer into a ``Constant`` node at the top of the graph.

    This is paddle2onnx's layout; applied after `strip_weights` the small tensors
    (biases, shapes, scales) become Constant nodes and the placeholders' shape
    tensors too, so no initializer is left at all.
    """
    from onnx import helper

    out = onnx.ModelProto()
    out.CopyFrom(proto)
    consts = [helper.make_node("Constant", [], [i.name], value=i) for i in out.graph.initializer]
    names = {i.name for i in out.graph.initializer}
    inputs = [i for i in out.graph.input if i.name not in names]
    del out.graph.initializer[:]
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    nodes = consts + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


# ----------------------------------------------------------------------------- transformers


def _hf(model_cls: str, config_cls: str, **config: Any) -> Any:
    import transformers

    cfg = getattr(transformers, config_cls)(**config)
    cfg._attn_implementation = "eager"
    _seeded()
    return getattr(transformers, model_cls)(cfg).eval()


class _Logits:
    """Wrap a transformers model so the export returns plain tensors, no cache."""

    def __new__(cls, model: Any, key: str, names: Sequence[str]) -> Any:
        nn = _torch().nn

        class Wrapped(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any) -> Any:
                kwargs = dict(zip(names, args, strict=True))
                if key == "logits":
                    kwargs["use_cache"] = False
                return self.model(**kwargs)[key]

        return Wrapped()


def _tokens(g: Any, batch: int, seq: int, vocab: int) -> dict[str, Any]:
    torch = _torch()
    ids = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[0, seq - max(seq // 4, 1):] = 0  # some padding, as a real batch has
    return {"input_ids": ids, "attention_mask": mask}


def _major(major: int, build: Callable[[], Export]) -> Callable[[], Export]:
    """`build`, refused unless the installed transformers has this major version."""

    def checked() -> Export:
        import transformers

        if int(transformers.__version__.split(".")[0]) != major:
            raise RuntimeError(f"needs transformers {major}.x, found {transformers.__version__}")
        return build()

    return checked


def bert(dynamo: bool) -> Callable[[], Export]:
    """A tiny BERT encoder: input_ids, attention_mask, token_type_ids; dynamic batch×sequence."""

    def build() -> Export:
        model = _hf("BertModel", "BertConfig", vocab_size=96, hidden_size=32,
                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=64, type_vocab_size=2)
        model = _Logits(model, "last_hidden_state",
                        ["input_ids", "attention_mask", "token_type_ids"])
        g = _seeded()
        torch = _torch()
        _jitter_constants(model, g)

        def feed(b: int, s: int) -> dict[str, Any]:
            t = _tokens(g, b, s, 96)
            t["token_type_ids"] = torch.randint(0, 2, (b, s), generator=g)
            return t

        dims = {0: "batch", 1: "sequence"}
        axes = {"input_ids": dims, "attention_mask": dims, "token_type_ids": dims,
                "last_hidden_state": dims}
        return torch_export(model, feed(2, 16), [feed(3, 9)], ["last_hidden_state"],
                            dynamo=dynamo, opset=18 if dynamo else 14, dynamic_axes=axes)

    return build


def vit(dynamo: bool = True) -> Export:
    """A tiny ViT encoder, dynamic batch; `dynamo=False` is the TorchScript export (opset 17)."""
    model = _hf("ViTModel", "ViTConfig", image_size=32, patch_size=8, num_channels=3,
                hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, add_pooling_layer=False)
    model = _Logits(model, "last_hidden_state", ["pixel_values"])
    g = _seeded()
    _jitter_constants(model, g)
    torch = _torch()
    x = torch.randn(2, 3, 32, 32, generator=g)
    other = [{"pixel_values": torch.randn(3, 3, 32, 32, generator=g)}]
    axes = {"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}}
    return torch_export(model, {"pixel_values": x}, other, ["last_hidden_state"],
                        dynamo=dynamo, opset=18 if dynamo else 17, dynamic_axes=axes)


def _decoder(model_cls: str, config_cls: str, vocab: int, dynamo: bool = True,
             **config: Any) -> Callable[[], Export]:
    def build() -> Export:
        model = _Logits(_hf(model_cls, config_cls, vocab_size=vocab, **config), "logits",
                        ["input_ids", "attention_mask"])
        g = _seeded()
        _jitter_constants(model, g)
        dims = {0: "batch", 1: "sequence"}
        axes = {"input_ids": dims, "attention_mask": dims, "logits": dims}
        return torch_export(model, _tokens(g, 2, 12, vocab), [_tokens(g, 1, 7, vocab)],
                            ["logits"], dynamo=dynamo, opset=18 if dynamo else 17,
                            dynamic_axes=axes,
                            tracing=None if dynamo else _vmap_free_causal_mask)

    return build


@contextlib.contextmanager
def _vmap_free_causal_mask() -> Any:
    """Build the causal mask without `torch.vmap` while tracing for TorchScript.

    transformers 4.57 builds every causal mask with `vmap` on torch >= 2.6, which the
    TorchScript tracer cannot record (``RuntimeError: unordered_map::at``,
    pytorch/pytorch#172880). transformers ships a vmap-free equivalent for its own
    export path (`integrations.executorch.sdpa_mask_without_vmap`, used by its
    ExecuTorch export); eager attention's mask is built from it here, the way a user
    would patch it. The reference outputs come from the unpatched model, so the
    verification proves the two masks agree.
    """
    from transformers import masking_utils
    from transformers.integrations.executorch import sdpa_mask_without_vmap

    original = masking_utils.sdpa_mask
    masking_utils.sdpa_mask = sdpa_mask_without_vmap
    try:
        yield
    finally:
        masking_utils.sdpa_mask = original


GPT2_CONFIG = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "n_inner": 64}
LLAMA_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2,
                "max_position_embeddings": 64, "tie_word_embeddings": False}
# MPT: ALiBi (a per-head bias, slopes x positions, sliced to the sequence at run time)
MPT_CONFIG = {"d_model": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 128,
              "expansion_ratio": 2}
gpt2 = _decoder("GPT2LMHeadModel", "GPT2Config", 96, **GPT2_CONFIG)
llama = _decoder("LlamaForCausalLM", "LlamaConfig", 96, **LLAMA_CONFIG)
gpt2_ts = _decoder("GPT2LMHeadModel", "GPT2Config", 96, dynamo=False, **GPT2_CONFIG)
llama_ts = _decoder("LlamaForCausalLM", "LlamaConfig", 96, dynamo=False, **LLAMA_CONFIG)
mpt = _decoder("MptForCausalLM", "MptConfig", 96, **MPT_CONFIG)
mpt_ts = _decoder("MptForCausalLM", "MptConfig", 96, dynamo=False, **MPT_CONFIG)


# ----------------------------------------------------------------------------- timm / keras


def timm_model(name: str, size: int, **kwargs: Any) -> Callable[[], Export]:
    """A timm architecture, random init (pretrained=False), dynamic batch, TorchScript."""

    def build() -> Export:
        import timm

        g = _seeded()
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
        _jitter_constants(model, g)
        torch = _torch()
        x = torch.randn(1, 3, size, size, generator=g)
        other = [{"input": torch.randn(2, 3, size, size, generator=g)}]
        axes = {"input": {0: "batch"}, "output": {0: "batch"}}
        return torch_export(model, {"input": x}, other, ["output"], dynamo=False, opset=17,
                            dynamic_axes=axes)

    return build


def keras_cnn() -> Export:
    """A small Keras functional CNN converted by tf2onnx (NHWC input, dynamic batch)."""
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((28, 28, 1), name="image")
    x = tf.keras.layers.Conv2D(8, 3, activation="relu")(inp)
    x = tf.keras.layers.BatchNormalization()(x)
    x = tf.keras.layers.Conv2D(16, 3, activation="relu")(x)
    x = tf.keras.layers.MaxPooling2D()(x)
    x = tf.keras.layers.Flatten()(x)
    x = tf.keras.layers.Dense(32, activation="relu")(x)
    out = tf.keras.layers.Dense(10, activation="softmax", name="probs")(x)
    model = tf.keras.Model(inp, out)
    rng = np.random.default_rng(0)
    bn = next(layer for layer in model.layers if "batch_normalization" in layer.name)
    gamma, beta, mean, var = bn.get_weights()  # fresh: constant; jitter like the torch models
    bn.set_weights([gamma + rng.uniform(-0.1, 0.1, gamma.shape).astype(np.float32),
                    beta + rng.uniform(-0.1, 0.1, beta.shape).astype(np.float32),
                    mean + rng.uniform(-0.1, 0.1, mean.shape).astype(np.float32),
                    var + rng.uniform(0.0, 0.2, var.shape).astype(np.float32)])
    spec = (tf.TensorSpec((None, 28, 28, 1), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=13)
    proto = canonical_names(proto)
    feeds = [{"image": rng.standard_normal((n, 28, 28, 1)).astype(np.float32)} for n in (2, 5)]
    expected = [[model(f["image"]).numpy()] for f in feeds]
    return Export(proto, feeds, expected, note="tf2onnx")


def canonical_names(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Give tf2onnx's generated names a run-independent form.

    tf2onnx numbers generated names (``name__N``) from a process-wide counter and
    dedups equal constants under whichever name it met first, so two runs differ in
    names and initializer order only. Initializers become ``const__K`` and other
    ``name__N`` tensors/nodes are renumbered, both in order of first use by the nodes;
    initializers are sorted by that order. The graph itself is unchanged.
    """
    import re

    graph = proto.graph
    inits = {i.name for i in graph.initializer}
    order: dict[str, str] = {}
    n_const = 0

    def new(name: str) -> str:
        nonlocal n_const
        if name in order:
            return order[name]
        if name in inits:
            order[name] = f"const__{n_const}"
            n_const += 1
        else:
            match = re.fullmatch(r"(.*)__\d+", name)
            order[name] = f"{match.group(1)}__{len(order)}" if match else name
        return order[name]

    for vi in graph.input:
        vi.name = new(vi.name)
    for node in graph.node:
        node.input[:] = [new(n) for n in node.input]
        node.output[:] = [new(n) for n in node.output]
        node.name = new(node.name)
    for vi in [*graph.output, *graph.value_info, *graph.initializer]:
        vi.name = new(vi.name)
    ordered = sorted(graph.initializer, key=lambda i: int(i.name.rsplit("__", 1)[1]))
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    return proto


# ----------------------------------------------------------------------------- registry

CORPUS: dict[str, Spec] = {
    "mnist_cnn_ts_dynbatch": Spec(mnist(dynamo=False, dynamic=True),
                                  "torch.onnx.export dynamo=False, opset 13",
                                  "`x.view(x.size(0), -1)`: Shape→Gather→Unsqueeze→Concat→Reshape"),
    "mnist_cnn_dynamo_dynbatch": Spec(mnist(dynamo=True, dynamic=True),
                                      "torch.onnx.export dynamo=True (dynamic_shapes), opset 18",
                                      "the new exporter's flatten with a symbolic batch"),
    "mnist_cnn_static": Spec(mnist(dynamo=False, dynamic=False),
                             "torch.onnx.export dynamo=False, opset 13, static batch 1",
                             "static twin of the dynamic-batch CNN (same MACs ratio)"),
    "dbnet_dyn_hw": Spec(dbnet, "torch.onnx.export dynamo=False, opset 13",
                         "FPN Resize(scales)+Add+Concat, ConvTranspose head, sigmoid maps"),
    "yolo_dynbatch": Spec(yolo, "torch.onnx.export dynamo=False, opset 12",
                          "C2f Split/Concat blocks; heads Reshape(N,anchors,5+C,H·W)+Split"),
    "segnet_dyn_hw": Spec(segnet, "torch.onnx.export dynamo=True (dynamic_shapes), opset 18",
                          "U-Net skips, ConvTranspose, Resize(sizes from Shape)"),
    "paddle_ocr_det_dyn": Spec(paddle_style, "torch dynamo=False opset 11, rewritten "
                               "paddle2onnx-style", "weights as Constant nodes, opset 11, "
                               "dynamic N×H×W, depthwise conv, HardSwish"),
    "paddle2onnx_ocr_det": Spec(paddle2onnx_det, "Paddle 3.3.1 → paddle2onnx 2.1.0 "
                                "(paddle.onnx.export), opset 11",
                                "a real paddle2onnx export, dynamic N×H×W"),
    "bert_ts": Spec(bert(dynamo=False), "transformers 4.57.6 BertModel, dynamo=False, opset 14",
                    "embeddings Gather, token types, attention mask, LayerNorm, GELU"),
    "bert_dynamo": Spec(bert(dynamo=True), "transformers 4.57.6 BertModel, dynamo=True, opset 18",
                        "same BERT through the new exporter"),
    # transformers 5.x writes the extended attention mask with a ConstantOfShape over an
    # empty shape (a scalar), which TVM's importer rejected. Made in an environment with
    # transformers 5.17.0 first on the path (the `corpus` extra pins 4.57.6):
    #   pip install --target /tmp/tf5 transformers==5.17.0
    #   PYTHONPATH=/tmp/tf5 python tools/make_real_corpus.py --models bert_hf5_ts
    "bert_hf5_ts": Spec(_major(5, bert(dynamo=False)),
                        "transformers 5.17.0 BertModel, dynamo=False, opset 14",
                        "transformers 5's mask: ConstantOfShape over an empty shape"),
    "vit": Spec(vit, "transformers 4.57.6 ViTModel, dynamo=True, opset 18",
                "patch-embedding Conv→Reshape→Transpose, cls token Concat"),
    "vit_ts": Spec(lambda: vit(dynamo=False),
                   "transformers 4.57.6 ViTModel, dynamo=False, opset 17",
                   "the same ViT through TorchScript"),
    "gpt2": Spec(gpt2, "transformers 4.57.6 GPT2LMHeadModel, dynamo=True, opset 18",
                 "Conv1D (MatMul), fused qkv Split, causal mask, tied lm head"),
    "llama": Spec(llama, "transformers 4.57.6 LlamaForCausalLM, dynamo=True, opset 18",
                  "RMSNorm, SwiGLU, GQA (4 q / 2 kv heads), rotary embeddings"),
    "gpt2_ts": Spec(gpt2_ts, "transformers 4.57.6 GPT2LMHeadModel, dynamo=False, opset 17",
                    "the same GPT-2 through TorchScript"),
    "llama_ts": Spec(llama_ts, "transformers 4.57.6 LlamaForCausalLM, dynamo=False, opset 17",
                     "the same LLaMA through TorchScript"),
    "mpt": Spec(mpt, "transformers 4.57.6 MptForCausalLM, dynamo=True, opset 18",
                "ALiBi per-head bias sliced to the sequence, fused Wqkv, LayerNorm without bias"),
    "mpt_ts": Spec(mpt_ts, "transformers 4.57.6 MptForCausalLM, dynamo=False, opset 17",
                   "the same MPT through TorchScript"),
    "timm_resnet": Spec(timm_model("resnet10t", 64), "timm resnet10t, dynamo=False, opset 17",
                        "deep stem, avg-pool downsample shortcut"),
    "timm_mobilevit": Spec(timm_model("mobilevitv2_050", 64),
                           "timm mobilevitv2_050, dynamo=False, opset 17",
                           "conv + linear-attention hybrid, unfold/fold reshapes"),
    "keras_cnn": Spec(keras_cnn, "Keras → tf2onnx, opset 13", "NHWC input, Transpose, Flatten"),
}

# Post-processing applied to the stripped proto before saving (by fixture name).
POST: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "paddle_ocr_det_dyn": initializers_as_constants,
}


# ----------------------------------------------------------------------------- main


def run_onnx(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run on CPU with graph optimisations off, to test the graph as written."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Max abs difference scaled by the largest reference magnitude."""
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-12))


def dynamic_dims(proto: onnx.ModelProto) -> str:
    """`name[d0,d1,...]` per graph input, symbolic dims by name."""
    parts = []
    inits = {i.name for i in proto.graph.initializer}
    for i in proto.graph.input:
        if i.name in inits:
            continue
        dims = [d.dim_param or str(d.dim_value) for d in i.type.tensor_type.shape.dim]
        parts.append(f"{i.name}[{','.join(dims)}]")
    return " ".join(parts)


def _inline_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Turn Constant nodes back into initializers so `strip_weights` sees every weight."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    nodes = []
    for node in out.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and len(node.attribute) == 1:
            tensor = numpy_helper.from_array(numpy_helper.to_array(value.t), node.output[0])
            out.graph.initializer.append(tensor)
            continue
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _drop_metadata(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Remove per-node metadata and doc strings (stack traces with local paths, fx names).

    They are most of a dynamo export's bytes, differ between machines, and no
    part of the graph's meaning.
    """
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for value in [*proto.graph.value_info, *proto.graph.input, *proto.graph.output]:
        del value.metadata_props[:]
    proto.graph.doc_string = ""
    return proto


def process(name: str, out_dir: Path, verify: bool) -> list[str]:
    """Export, strip, save and verify one fixture; return a summary row."""
    spec = CORPUS[name]
    exp = spec.build()
    # the dynamo exporter and tf2onnx write some weights as Constant nodes: strip those too
    proto = _drop_metadata(_inline_constants(exp.proto))
    proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    onnx.checker.check_model(proto)
    stripped, weights = strip_weights(proto)
    stripped = POST.get(name, lambda p: p)(stripped)
    onnx.checker.check_model(stripped)
    path = out_dir / f"{name}.onnx"
    onnx.save(stripped, str(path))

    err = "-"
    if verify:
        restored = restore_weights(_inline_constants(onnx.load(str(path))), weights)
        worst = 0.0
        for feed, expected in zip(exp.feeds, exp.expected, strict=True):
            actual = run_onnx(restored, feed)
            for a, e in zip(actual, expected, strict=True):
                if a.shape != e.shape:
                    raise AssertionError(f"{name}: output shape {a.shape} != {e.shape}")
                worst = max(worst, relative_error(a, e))
        if not worst <= MAX_REL_ERR:  # also catches NaN
            raise AssertionError(f"{name}: relative error {worst:.3g} > {MAX_REL_ERR}")
        err = f"{worst:.1e} ({len(exp.feeds)} shapes)"
    opset = next(o.version for o in stripped.opset_import if o.domain in ("", "ai.onnx"))
    return [name, f"{path.stat().st_size / 1024:.1f}", str(opset), dynamic_dims(stripped),
            str(len(weights)), err, exp.note]


def main(argv: Sequence[str] | None = None) -> int:
    """Export the selected fixtures into ``--out`` and print a summary table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    default = [n for n in CORPUS if not n.startswith(("timm_", "keras_", "paddle2onnx_"))]
    parser.add_argument("--models", nargs="+", choices=sorted(CORPUS), default=default)
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="refill the placeholders, compare onnxruntime with the source "
                             "framework at every test shape (default: on)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"onnx {onnx.__version__}, onnxruntime {ort.__version__}")
    header = ["fixture", "KB", "opset", "inputs", "placeholders", "max rel err", "exporter"]
    rows = [header]
    failed = []
    for name in args.models:
        try:
            rows.append(process(name, args.out, args.verify))
        except Exception as exc:  # noqa: BLE001 - report and go on to the next model
            failed.append(name)
            print(f"{name}: FAILED {type(exc).__name__}: {str(exc).splitlines()[:1]}",
                  file=sys.stderr)
        else:
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
