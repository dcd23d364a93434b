"""PyTorch in and back: export keeps module paths, apply_plan's module computes what the
pruned ONNX model computes (onnxruntime), and the ways a plan cannot be applied fail
with one clear error. Skipped without torch (CI installs no torch)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

from compress_ir.core.errors import UnsupportedModelError, UsageError  # noqa: E402
from compress_ir.frontends.torch import apply_plan, compress, export  # noqa: E402
from compress_ir.passes.analysis.prune_plan import MODULE_KEY  # noqa: E402

warnings.filterwarnings("ignore", message=".*(TorchScript|will be removed|training mode).*")


class Inner(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.conv1(x)))))) + x


class Net(nn.Module):
    """Residual adds, BatchNorm, depthwise convs, Flatten -> Linear."""

    def __init__(self, hardcoded_view: bool = False) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.layer1 = nn.Sequential(Inner(16), Inner(16))
        self.head = nn.Conv2d(16, 24, 1)
        self.fc = nn.Linear(24 * 4 * 4, 10)
        self.hardcoded_view = hardcoded_view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.head(self.layer1(self.stem(x))))
        y = nn.functional.adaptive_avg_pool2d(y, 4)
        return self.fc(y.view(y.shape[0], 384) if self.hardcoded_view else torch.flatten(y, 1))


class Attention(nn.Module):
    """The head count follows the projections' width, so pruning whole heads carries over."""

    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.dh = d // heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        dh, heads = self.dh, self.q.out_features // self.dh

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, heads, dh).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / dh**0.5, -1)
        return self.o((a @ v).transpose(1, 2).reshape(b, t, heads * dh))


class TinyTransformer(nn.Module):
    """Pre-norm block: LayerNorm, multi-head attention, GELU MLP, residuals."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.head = nn.Linear(d, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(self.ln1(x))
        return self.head(x + self.mlp(self.ln2(x)))


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics: identity BNs would hide a wrongly cut running_var."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


def _net(**kw: bool) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(Net(**kw))


def _ort(proto: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def _assert_matches_pruned_onnx(module: nn.Module, example: torch.Tensor, pipeline: str,
                                dynamo: bool = False) -> nn.Module:
    result = compress(module, (example,), pipeline, dynamo=dynamo)
    small = apply_plan(module, result.plan, (example,))
    assert sum(p.numel() for p in small.parameters()) < sum(
        p.numel() for p in module.parameters())
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = small.eval()(x).numpy()
    assert _rel(got, _ort(result.model, x)) < 1e-5
    return small


def _modules_of(proto: onnx.ModelProto) -> dict[str, str]:
    return {n.name: {p.key: p.value for p in n.metadata_props}.get(MODULE_KEY)
            for n in proto.graph.node}


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_export_keeps_module_paths_and_batchnorm(tmp_path: Path, dynamo: bool) -> None:
    if dynamo:
        pytest.importorskip("onnxscript")
    model, x = _net(), torch.randn(2, 3, 16, 16)
    path = export(model, (x,), tmp_path / "net.onnx", dynamo=dynamo,
                  dynamic_axes={"input": {0: "batch"}})
    proto = onnx.load(str(path))
    by_op: dict[str, set] = {}
    for node in proto.graph.node:
        by_op.setdefault(node.op_type, set()).add(_modules_of(proto)[node.name])
    assert by_op["Conv"] == {"stem", "head", *(f"layer1.{i}.{c}" for i in (0, 1)
                                               for c in ("conv1", "dw"))}
    assert by_op["BatchNormalization"] == {f"layer1.{i}.bn{j}" for i in (0, 1) for j in (1, 2)}
    assert by_op["Gemm"] == {"fc"}
    with torch.no_grad():
        want = model(torch.cat([x, x]))
    assert _rel(_ort(proto, torch.cat([x, x])), want.numpy()) < 1e-5  # dynamic batch


def test_apply_plan_matches_pruned_onnx_torchscript() -> None:
    small = _assert_matches_pruned_onnx(_net(), torch.randn(2, 3, 16, 16),
                                        "channel-prune{ratio=0.5}")
    inner = small.layer1[0]
    assert inner.conv1.out_channels == inner.bn1.num_features == inner.dw.groups == 8
    assert small.fc.in_features == small.head.out_channels * 16


def test_apply_plan_matches_pruned_onnx_dynamo() -> None:
    pytest.importorskip("onnxscript")
    _assert_matches_pruned_onnx(_net(), torch.randn(2, 3, 16, 16), "channel-prune{ratio=0.5}",
                                dynamo=True)


def test_apply_plan_two_prune_steps() -> None:
    """The second step's slices refer to the once-pruned model; replayed in order."""
    small = _assert_matches_pruned_onnx(
        _net(), torch.randn(2, 3, 16, 16),
        "channel-prune{ratio=0.25},channel-prune{ratio=0.25,criterion=l1}")
    assert small.stem.out_channels == 9  # 16 -> 12 -> 9


def test_apply_plan_transformer_block() -> None:
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    small = _assert_matches_pruned_onnx(model, torch.randn(2, 6, 8), "channel-prune{ratio=0.5}")
    assert small.mlp[0].out_features == small.mlp[2].in_features == 64
    # whole heads go (q, k, v outputs and o's input together); forward() derives the count
    assert small.attn.q.out_features == small.attn.v.out_features == small.attn.o.in_features
    assert small.attn.q.out_features % small.attn.dh == 0 and small.attn.q.out_features < 32


def test_plan_file_round_trip(tmp_path: Path) -> None:
    model, x = _net(), torch.randn(1, 3, 16, 16)
    result = compress(model, (x,), "channel-prune{ratio=0.25,criterion=l1}",
                      plan=tmp_path / "plan.json", output=tmp_path / "small.onnx")
    small = apply_plan(model, tmp_path / "plan.json", x)
    with torch.no_grad():
        got = small(x).numpy()
    assert _rel(got, _ort(onnx.load(str(tmp_path / "small.onnx")), x)) < 1e-5
    assert result.report["ratios"]["macs"] < 1


def test_hardcoded_view_is_caught() -> None:
    model, x = _net(hardcoded_view=True), torch.randn(2, 3, 16, 16)
    result = compress(model, (x,), "channel-prune{ratio=0.5}")
    with pytest.raises(UsageError, match="pass example_inputs"):
        apply_plan(model, result.plan)
    with pytest.raises(UnsupportedModelError, match="hardcodes a channel count"):
        apply_plan(model, result.plan, x)


def test_folded_batchnorm_is_refused(tmp_path: Path) -> None:
    """torch's own eval export folds BN into the conv: the plan cannot say how to cut BN."""
    from compress_ir.api import compress as compress_onnx

    model, x = _net(), torch.randn(1, 3, 16, 16)
    path = tmp_path / "folded.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False)
    plan = compress_onnx(str(path), "channel-prune{ratio=0.5}").plan
    with pytest.raises(UnsupportedModelError, match="folded into a conv"):
        apply_plan(model, plan, x)


def test_weight_changing_pipeline_needs_structure_only() -> None:
    model, x = _net(), torch.randn(1, 3, 16, 16)
    plan = compress(model, (x,), "channel-prune{ratio=0.5},sparsify{sparsity=0.5}").plan
    with pytest.raises(UsageError, match="structure_only=True"):
        apply_plan(model, plan)
    small = apply_plan(model, plan, x, structure_only=True)
    assert small.stem.out_channels == 8


def test_plan_from_another_model_is_refused() -> None:
    plan = compress(_net(), (torch.randn(1, 3, 16, 16),), "channel-prune{ratio=0.5}").plan
    torch.manual_seed(0)
    other = TinyTransformer()
    with pytest.raises(UnsupportedModelError, match="plan"):
        apply_plan(other, plan)


def test_original_module_is_untouched() -> None:
    model = _net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = compress(model, (torch.randn(1, 3, 16, 16),), "channel-prune{ratio=0.5}").plan
    apply_plan(model, plan)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenet_v2"])
def test_torchvision(arch: str) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomise_bn(getattr(torchvision.models, arch)(weights=None, num_classes=10))
    small = _assert_matches_pruned_onnx(model, torch.randn(1, 3, 64, 64),
                                        "channel-prune{ratio=0.5}")
    assert sum(p.numel() for p in small.parameters()) < 0.6 * sum(
        p.numel() for p in model.parameters())
