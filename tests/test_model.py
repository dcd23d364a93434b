"""The IR wrapper: copies are independent; the networkx view mirrors the graph."""

from __future__ import annotations

import numpy as np
from oracle import tiny_net

from compress_ir.frontends.onnx import load_onnx


def test_copy_is_independent() -> None:
    model = load_onnx(tiny_net())
    clone = model.copy()
    weight = clone.tensors()["conv1.w"]
    weight.values = np.zeros_like(weight.values)
    assert np.abs(model.tensors()["conv1.w"].values).sum() > 0


def test_networkx_view_follows_tensor_uses() -> None:
    model = load_onnx(tiny_net())
    view = model.to_networkx()
    assert set(view.nodes) == {"conv1", "relu1", "conv2"}
    edges = {(u, v, d["tensor"]) for u, v, d in view.edges(data=True)}
    assert edges == {("conv1", "relu1", "h"), ("relu1", "conv2", "r")}
    assert view.nodes["conv2"]["op"] == "Conv"
