"""Padded token positions are not calibration data.

Why: a batch of texts is padded to its longest text, and the model computes hidden states
at the padded positions too, though nothing downstream reads them (attention masks them
out, pooling skips them). Rows taken there are off-distribution, and in short texts they
are most of the rows: a Hessian `X^T X` or a least-squares refit built on them fits the
padding instead of the text. So when the model has an attention-mask input, the rows of
a layer's input at masked positions are left out of every calibration statistic that
samples rows (OBS Hessians, reconstruction refits, ThiNet/LASSO samples).

A layer input is matched to the mask by shape: `[B, S, K]` against the mask's `[B, S]`
(or `[B*S, K]` when the exporter flattened tokens before a Gemm). Inputs of any other
shape (image features, per-head tensors) are sampled as before.
"""

from __future__ import annotations

import numpy as np
import onnx

from compress_ir.core.feeds import input_kinds


def token_mask(proto: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The calibration set's `[N, S]` real-token mask (True = a real token), or None.

    None when the model has no 2-D mask input, has several that disagree, or when no
    position is padded (nothing to skip).
    """
    masks = [np.asarray(arrays[name]) != 0 for name, kind in input_kinds(proto).items()
             if kind.kind == "mask" and name in arrays and np.ndim(arrays[name]) == 2]
    if not masks or any(m.shape != masks[0].shape or (m != masks[0]).any() for m in masks):
        return None
    return None if masks[0].all() else masks[0]


def batch_mask(mask: np.ndarray | None, batch: int, size: int) -> np.ndarray | None:
    """The rows of `mask` for calibration batch `batch` of `size` samples."""
    return None if mask is None else mask[batch * size:(batch + 1) * size]


def valid_rows(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray | None:
    """Which rows of `x` flattened to `[-1, K]` are real tokens, or None (all rows count).

    Only an input whose leading dims are the mask's (`[B, S, K]`) or whose rows are the
    mask's tokens in order (`[B*S, K]`) is matched.
    """
    if mask is None or x.ndim < 2:
        return None
    if tuple(x.shape[:-1]) == mask.shape or (x.ndim == 2 and x.shape[0] == mask.size):
        return mask.reshape(-1)
    return None
