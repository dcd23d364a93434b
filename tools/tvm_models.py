"""Transformer rows of the TVM benchmarks: which model, at which deployment shape, pruned how.

Why: issue 13 asks for an encoder row (BERT-base-like) and a ViT-S in `bench_tvm.py`, and
issue 14 for the latency of the real pretrained MiniLM against onnxruntime. CNN rows come
from committed fixtures; these come from torch exports (TorchScript exporter, opset 17),
cached under `~/.cache/compress-ir/tvm_models` (or `$COMPRESS_IR_MODEL_CACHE`), because
committing 90-350 MB of weights is not an option:

- `minilm`: all-MiniLM-L6-v2 with its real weights (the `transformer` extra), sequence 128;
- `bert_base`: BERT-base shape (12 layers, 12 heads, hidden 768, FFN 3072), random weights,
  sequence 128;
- `vit_s`: ViT-S/16 shape (12 layers, 6 heads, hidden 384, FFN 1536) at 224x224, i.e. 197
  tokens (a token count that is not a multiple of any vector width), random weights.

Each row prunes heads and FFN neurons with `channel-prune{ratio=0.5}` (the same fraction of
every group: the MACs of all MatMuls halve). Needs `pip install -e '.[transformer]'`.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

PIPELINE = "channel-prune{criterion=l2,ratio=0.5}"
SEQ = 128


@dataclass(frozen=True)
class TransformerRow:
    """How to make one benchmark model and feed it at its deployment shape."""

    export: Callable[[Path], None]
    shapes: dict[str, tuple[int, ...]]
    pipeline: str = PIPELINE


def cache_dir() -> Path:
    return Path(os.environ.get("COMPRESS_IR_MODEL_CACHE",
                               Path.home() / ".cache" / "compress-ir" / "tvm_models"))


def _export_minilm(path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import transformer_data as td

    td.export_onnx(path)


def _export_hf(path: Path, model, args: tuple, names: list[str]) -> None:  # noqa: ANN001
    """TorchScript export of a transformers model's last hidden state."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model.eval()

        def forward(self, *xs):  # noqa: ANN002, ANN202
            return self.inner(**dict(zip(names, xs, strict=True))).last_hidden_state

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(), args, str(path), input_names=names,
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False)


def _export_bert_base(path: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, attn_implementation="eager")
    ids = torch.randint(0, cfg.vocab_size, (1, SEQ))
    _export_hf(path, BertModel(cfg), (ids, torch.ones_like(ids), torch.zeros_like(ids)),
               ["input_ids", "attention_mask", "token_type_ids"])


def _export_vit_s(path: Path) -> None:
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                    intermediate_size=1536, image_size=224, patch_size=16,
                    attn_implementation="eager")
    _export_hf(path, ViTModel(cfg, add_pooling_layer=False), (torch.randn(1, 3, 224, 224),),
               ["pixel_values"])


ROWS: dict[str, TransformerRow] = {
    "minilm": TransformerRow(_export_minilm, {"input_ids": (1, SEQ), "attention_mask": (1, SEQ),
                                              "token_type_ids": (1, SEQ)}),
    "bert_base": TransformerRow(_export_bert_base, {}),
    "vit_s": TransformerRow(_export_vit_s, {}),
}


def load(name: str) -> tuple[onnx.ModelProto, TransformerRow]:
    """The model (exported once into the cache, atomically) and its row."""
    row = ROWS[name]
    path = cache_dir() / f"{name}.onnx"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")
        row.export(tmp)
        os.replace(tmp, path)
    return onnx.load(str(path)), row
