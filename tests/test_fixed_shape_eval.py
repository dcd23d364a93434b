"""tools/transformer_data.FixedShape: a fixed-shape [batch, 128] export (onnxsim's anchor)
evaluated on smaller feeds: rows and tokens padded with mask 0, outputs cropped back."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from transformer_data import FixedShape  # noqa: E402


class _Session:
    """Takes exactly [4, 8]; output [4, 8, 2] = (id * mask, position)."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, names, feed):  # noqa: ANN001, ANN201
        self.calls += 1
        ids, mask = feed["input_ids"], feed["attention_mask"]
        assert ids.shape == mask.shape == (4, 8)
        pos = np.broadcast_to(np.arange(8), ids.shape)
        return [np.stack([ids * mask, pos], axis=-1).astype(np.float32)]


def test_pads_rows_and_tokens_and_crops_back() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, (6, 5))
    mask = np.ones_like(ids)
    mask[2, 3:] = 0
    sess = _Session()
    (out,) = FixedShape(sess, batch=4, seq=8).run(None, {"input_ids": ids,
                                                          "attention_mask": mask})
    assert out.shape == (6, 5, 2) and sess.calls == 2  # 6 rows: two fixed batches
    np.testing.assert_array_equal(out[..., 0], ids * mask)
    np.testing.assert_array_equal(out[..., 1], np.broadcast_to(np.arange(5), (6, 5)))
