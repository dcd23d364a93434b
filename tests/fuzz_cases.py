"""Structure-aware fuzz cases for the CLI's promises (issue 10), shared by
tests/test_fuzz.py (derandomised, small, in CI) and tools/fuzz.py (long runs).

A case is a folder of input files plus a command line. `run_case` runs the CLI
in-process with stdout/stderr captured at the file-descriptor level (so
onnxruntime's C++ log lines count too) and returns the promises it broke:
- the exit code is documented (0, 1, 2, 3, 130) - 70 "internal error" is a bug;
- a failure prints exactly one line `compress-ir: error: ...`, a success nothing,
  and never a traceback;
- every input file keeps its bytes;
- no stray files: on failure the folder is as before except the `--report`
  (written on every outcome for CI gates, with a non-ok `status`), on success only
  the declared outputs are new.

Families: `onnx` (mutated model protos, external data), `meta` (mutated
meta.json of a real artifact), `calib` (mutated .npy/.npz/images, random:N),
`pipeline` (pipeline text), `paths` (output paths aimed at inputs, links, devices).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from compress_ir.core.errors import EXIT_INTERNAL

DOCUMENTED = {0, 1, 2, 3, 130}
FAMILIES = ("onnx", "meta", "calib", "pipeline", "paths")


@dataclass
class Case:
    """Files to create (name -> bytes, or a ("symlink"|"dir"|"hardlink", target) tuple),
    the argv (names in {braces} become paths in the case folder), declared outputs."""

    files: dict[str, bytes | tuple[str, str]]
    argv: list[str]
    outputs: list[str] = field(default_factory=list)
    note: str = ""


# --- models --------------------------------------------------------------------------------


def base_model(seed: int = 0, bn: bool = False) -> onnx.ModelProto:
    """x[1,3,8,8] -> conv1(8) [-> bn] -> relu -> conv2(4) -> y (the oracle's tiny net)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "conv1.w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "conv1.b"),
        numpy_helper.from_array(rng.standard_normal((4, 8, 3, 3)).astype(np.float32), "conv2.w"),
    ]
    nodes = [helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["h"], name="conv1",
                              pads=[1, 1, 1, 1])]
    src = "h"
    if bn:
        for name, value in (("bn.s", 1.5), ("bn.b", 0.1), ("bn.m", 0.2), ("bn.v", 1.0)):
            inits.append(numpy_helper.from_array(np.full(8, value, np.float32), name))
        nodes.append(helper.make_node("BatchNormalization", ["h", "bn.s", "bn.b", "bn.m", "bn.v"],
                                      ["hb"], name="bn"))
        src = "hb"
    nodes += [helper.make_node("Relu", [src], ["r"], name="relu1"),
              helper.make_node("Conv", ["r", "conv2.w"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


MODEL_BYTES = base_model().SerializeToString()
OPS = ["Conv", "Relu", "Add", "Gemm", "MatMul", "Frobnicate", "Expand", "Tile", "Reshape",
       "Concat", "BatchNormalization", "Identity", "Constant", "If", "Loop", ""]
PASSES = ["channel-prune", "channel-prune{ratio=0.5,criterion=l1}", "sparsify{sparsity=0.5}",
          "fold-bn", "share-weights{bits=2}", "channel-prune{criterion=fpgm,scope=global}"]
LOCATIONS = ["w.bin", "../w.bin", "/etc/passwd", "a\x00b", "sub", "nope.bin", "w.bin/..",
             "./w.bin", "link.bin", ""]


def _values(init: onnx.TensorProto) -> np.ndarray | None:
    """The initializer's array, or None once earlier mutations made it unreadable."""
    if init.data_location == TensorProto.EXTERNAL:
        return None
    try:
        return numpy_helper.to_array(init)
    except Exception:  # noqa: BLE001 - a mutated tensor may be anything
        return None


def _mutate_proto(data: st.DataObject, proto: onnx.ModelProto, files: dict) -> None:
    g = proto.graph
    kind = data.draw(st.sampled_from([
        "op", "dtype", "dims", "dup_name", "drop_init", "drop_node", "swap_inputs", "attr",
        "opset", "ir", "external", "sparse", "output_shape", "raw_len", "input_dims", "const",
        "expand"]), label="mutation")
    if kind == "op" and g.node:
        node = g.node[data.draw(st.integers(0, len(g.node) - 1))]
        node.op_type = data.draw(st.sampled_from(OPS))
    elif kind == "dtype" and g.initializer:
        init = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
        init.data_type = data.draw(st.integers(-1, 25))
    elif kind == "dims" and g.initializer:
        init = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
        dims = data.draw(st.lists(st.sampled_from([0, 1, 3, -1, 2**31, 2**40, 2**62]),
                                  max_size=5))
        del init.dims[:]
        init.dims.extend(dims)
    elif kind == "dup_name" and len(g.node) > 1:
        last = len(g.node) - 1
        i, j = data.draw(st.integers(0, last)), data.draw(st.integers(0, last))
        g.node[i].output[0] = g.node[j].output[0]
        if data.draw(st.booleans()) and len(g.initializer) > 1:
            g.initializer[1].name = g.initializer[0].name
    elif kind == "drop_init" and g.initializer:
        del g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
    elif kind == "drop_node" and g.node:
        del g.node[data.draw(st.integers(0, len(g.node) - 1))]
    elif kind == "swap_inputs" and g.node:
        node = g.node[data.draw(st.integers(0, len(g.node) - 1))]
        names = list(node.input)
        data.draw(st.randoms(use_true_random=False)).shuffle(names)
        del node.input[:]
        node.input.extend(names)
    elif kind == "attr" and g.node:
        node = g.node[data.draw(st.integers(0, len(g.node) - 1))]
        name = data.draw(st.sampled_from(["pads", "group", "kernel_shape", "strides",
                                          "dilations", "axis", "epsilon"]))
        value = data.draw(st.one_of(st.lists(st.integers(-3, 2**20), min_size=1, max_size=5),
                                    st.integers(-2, 2**31), st.floats(allow_nan=True)))
        node.attribute.append(helper.make_attribute(name, value))
    elif kind == "opset":
        proto.opset_import[0].version = data.draw(st.integers(0, 40))
    elif kind == "ir":
        proto.ir_version = data.draw(st.integers(0, 20))
    elif kind == "external" and g.initializer:
        init = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
        array = _values(init)
        if array is None:
            return
        raw = array.tobytes()
        files["w.bin"] = raw + data.draw(st.binary(max_size=8))
        files["sub"] = ("dir", "")
        files["link.bin"] = ("symlink", "/etc/hostname")
        init.ClearField("raw_data")
        del init.float_data[:]
        init.data_location = TensorProto.EXTERNAL
        for key, value in (("location", data.draw(st.sampled_from(LOCATIONS))),
                           ("offset", data.draw(st.sampled_from(["0", "4", "-1", "x", "99999"]))),
                           ("length", data.draw(st.sampled_from([str(len(raw)), "0", "-5",
                                                                 "1e3", str(2**62)])))):
            if data.draw(st.booleans()):
                entry = init.external_data.add()
                entry.key, entry.value = key, value
    elif kind == "sparse" and g.initializer:
        init = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
        array = _values(init)
        if array is None or array.dtype.kind not in "biuf":
            return
        g.initializer.remove(init)
        values = array.reshape(-1)
        n = data.draw(st.integers(0, values.size + 2))
        idx = data.draw(st.lists(st.integers(-2, values.size + 2), min_size=n, max_size=n))
        sp = helper.make_sparse_tensor(
            numpy_helper.from_array(np.resize(values, n).astype(values.dtype), init.name),
            numpy_helper.from_array(np.asarray(idx, np.int64).reshape(-1), ""),
            data.draw(st.sampled_from([list(init.dims), [values.size], [2**40], [-1]])))
        g.sparse_initializer.append(sp)
    elif kind == "output_shape":
        dims = g.output[0].type.tensor_type.shape.dim
        if dims:
            dims[data.draw(st.integers(0, len(dims) - 1))].dim_value = data.draw(
                st.integers(0, 2**40))
    elif kind == "raw_len" and g.initializer:
        init = g.initializer[data.draw(st.integers(0, len(g.initializer) - 1))]
        init.raw_data = data.draw(st.binary(max_size=64))
    elif kind == "input_dims":
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            d = dims[data.draw(st.integers(0, len(dims) - 1))]
            if data.draw(st.booleans()):
                d.dim_param = data.draw(st.sampled_from(["N", "", "batch", "é"]))
            else:
                d.dim_value = data.draw(st.sampled_from([0, 2, 2**20, 2**40]))
    elif kind == "const":
        value = data.draw(st.sampled_from([np.ones((2**12, 2**12), np.float32)[:1, :1],
                                           np.array(3.0, np.float32), np.zeros((0,), np.int64)]))
        g.node.insert(0, helper.make_node("Constant", [], ["c"], name="c",
                                          value=numpy_helper.from_array(value)))
        g.node[-1].input.append("c")
    elif kind == "expand":
        shape = data.draw(st.lists(st.sampled_from([1, 8, 2**10, 2**15, 0]), min_size=1,
                                   max_size=4))
        g.initializer.append(numpy_helper.from_array(np.asarray(shape, np.int64), "bshape"))
        g.initializer.append(numpy_helper.from_array(np.ones(1, np.float32), "bone"))
        g.node.insert(0, helper.make_node("Expand", ["bone", "bshape"], ["bigc"], name="bomb"))
        g.node.append(helper.make_node("Identity", ["bigc"], ["bout"], name="bout"))
        g.output.append(helper.make_tensor_value_info("bout", TensorProto.FLOAT, None))


@st.composite
def onnx_cases(draw: st.DrawFn) -> Case:
    proto = base_model(bn=draw(st.booleans()))
    files: dict[str, bytes | tuple[str, str]] = {}

    class _Data:
        def draw(self, strategy: st.SearchStrategy, label: str | None = None):  # noqa: ANN201
            return draw(strategy)

    for _ in range(draw(st.integers(1, 3))):
        _mutate_proto(_Data(), proto, files)
    blob = proto.SerializeToString()
    how = draw(st.sampled_from(["plain", "plain", "plain", "truncate", "flip"]))
    if how == "truncate" and blob:
        blob = blob[: draw(st.integers(0, len(blob) - 1))]
    elif how == "flip" and blob:
        pos = draw(st.integers(0, len(blob) - 1))
        blob = blob[:pos] + bytes([blob[pos] ^ draw(st.integers(1, 255))]) + blob[pos + 1:]
    files["m.onnx"] = blob
    argv = ["{m.onnx}", "--pass", draw(st.sampled_from(PASSES)), "-o", "{out.onnx}",
            "--report", "{r.json}"]
    if draw(st.booleans()):
        argv.append("--sparse-storage")
    return Case(files, argv, ["out.onnx", "r.json"], note=how)


# --- meta.json ------------------------------------------------------------------------------

_META_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63), st.floats(allow_nan=True),
    st.text(max_size=12), st.lists(st.integers(-2, 2**40), max_size=4),
    st.sampled_from(["float32", "int64", "object", "model.so", "../evil.so", "/bin/true",
                     "cuda", "cpu", "x86", "arm", "<U3", "f8"]),
    st.dictionaries(st.sampled_from(["name", "shape", "dtype"]),
                    st.sampled_from(["x", [1, 3, 8, 8], [1, 3, 8, 9], "float32", [], None]),
                    max_size=3))


def meta_cases(meta_text: str, library: bytes) -> st.SearchStrategy[Case]:
    """Mutations of a real artifact's meta.json (the library stays the real one)."""
    base = json.loads(meta_text)

    @st.composite
    def build(draw: st.DrawFn) -> Case:
        meta = copy.deepcopy(base)
        for _ in range(draw(st.integers(1, 3))):
            where = draw(st.sampled_from(["top", "input", "output", "drop", "raw"]))
            if where == "top":
                meta[draw(st.sampled_from(sorted(meta) + ["library", "device"]))] = draw(
                    _META_VALUES)
            elif where in ("input", "output") and isinstance(meta.get(f"{where}s"), list) \
                    and meta[f"{where}s"] and isinstance(meta[f"{where}s"][0], dict):
                meta[f"{where}s"][0][draw(st.sampled_from(["name", "shape", "dtype"]))] = draw(
                    _META_VALUES)
            elif where == "drop" and meta:
                meta.pop(draw(st.sampled_from(sorted(meta))), None)
        text = json.dumps(meta)
        if draw(st.integers(0, 9)) == 0:
            cut = draw(st.integers(0, len(text)))
            text = text[:cut]
        files = {"art": ("dir", ""), "art/meta.json": text.encode(), "art/model.so": library}
        argv = ["run", "{art}", "--quiet"]
        outputs = []
        if draw(st.booleans()):
            argv += ["--output", "{y.npz}"]
            outputs.append("y.npz")
        return Case(files, argv, outputs)

    return build()


# --- calibration ----------------------------------------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


@st.composite
def calib_cases(draw: st.DrawFn) -> Case:
    files: dict[str, bytes | tuple[str, str]] = {"m.onnx": MODEL_BYTES}
    kind = draw(st.sampled_from(["npy", "npz", "image", "random"]))
    shape = draw(st.sampled_from([(2, 3, 8, 8), (3, 8, 8), (0, 3, 8, 8), (2, 3, 8, 9), (),
                                  (2, 3, 8, 8, 1)]))
    dtype = draw(st.sampled_from(["float32", "float64", "int64", "bool", "complex64", "U3"]))
    try:
        array = np.zeros(shape, dtype=dtype)
    except TypeError:
        array = np.zeros(shape, np.float32)
    if array.dtype.kind == "f" and array.size and draw(st.booleans()):
        array.reshape(-1)[0] = draw(st.sampled_from([np.nan, np.inf, 1e30]))
    blob = _npy(array)
    blob = _damage(draw, blob)
    extra: list[str] = []
    if kind == "npy":
        files["c.npy"] = blob
        spec = "{c.npy}"
    elif kind == "npz":
        buf = io.BytesIO()
        method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
        names = draw(st.lists(st.sampled_from(["x", "y", "x.npy", "../x"]), max_size=3))
        with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", method) as zf:
            warnings.simplefilter("ignore")  # duplicate member names are part of the fuzz
            for name in names:
                zf.writestr(name if name.endswith(".npy") else name + ".npy", blob)
        files["c.npz"] = _damage(draw, buf.getvalue())
        spec = "{c.npz}"
    elif kind == "image":
        from PIL import Image

        files["imgs"] = ("dir", "")
        for i in range(draw(st.integers(0, 3))):
            fmt = draw(st.sampled_from(["PNG", "BMP", "PPM"]))
            img = Image.new(draw(st.sampled_from(["RGB", "L", "1"])),
                            (draw(st.integers(1, 32)), draw(st.integers(1, 32))))
            buf = io.BytesIO()
            img.save(buf, fmt)
            files[f"imgs/{i}.{fmt.lower()}"] = _damage(draw, buf.getvalue())
        if draw(st.booleans()):
            files["imgs/sub.png"] = ("dir", "")
        spec = "{imgs}"
        if draw(st.booleans()):
            extra += ["--calib-size", draw(st.sampled_from(["8x8", "0x0", "1x99999", "axb",
                                                            "4x4x4", "-1x8"]))]
        if draw(st.booleans()):
            extra += ["--calib-std", draw(st.sampled_from(["0", "1,2,3", "nan", "1,2", "0.5"]))]
        if draw(st.booleans()):
            extra += ["--calib-color", draw(st.sampled_from(["L", "BGR", "RGB"]))]
    else:
        spec = "random" + draw(st.sampled_from(["", ":4", ":0", ":-3", ":abc", ":1e8",
                                                 ":99999999999", ": 3", ":4:5"]))
    if draw(st.booleans()):
        extra += ["--calib-samples", draw(st.sampled_from(["1", "0", "-1", "x", "3"]))]
    criterion = draw(st.sampled_from(["act-mean", "apoz", "thinet"]))
    argv = ["{m.onnx}", "--calib", spec, "--pass", f"channel-prune{{criterion={criterion}}}",
            "--report", "{r.json}", *extra]
    return Case(files, argv, ["r.json"], note=kind)


def _damage(draw: st.DrawFn, blob: bytes) -> bytes:
    how = draw(st.sampled_from(["keep", "keep", "truncate", "flip", "append"]))
    if how == "truncate" and blob:
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if how == "flip" and blob:
        pos = draw(st.integers(0, len(blob) - 1))
        return blob[:pos] + bytes([blob[pos] ^ draw(st.integers(1, 255))]) + blob[pos + 1:]
    if how == "append":
        return blob + draw(st.binary(min_size=1, max_size=16))
    return blob


# --- pipeline text --------------------------------------------------------------------------

_TOKENS = ["channel-prune", "sparsify", "fold-bn", "share-weights", "reconstruct", "{", "}",
           "[", "]", ",", "=", "ratio", "0.5", "nan", "inf", "-1", "1e309", "criterion",
           "l1", "scope", "global", "sensitivity", "pattern", "2:4", "block", "16x1", "bits",
           "exclude", "conv*", "plot", "x.onnx", "p.png", "tolerance", "target-macs",
           "round-to", "min-channels", " ", "é", "\x00", "\n", "true", "none"]


@st.composite
def pipeline_cases(draw: st.DrawFn) -> Case:
    if draw(st.booleans()):
        text = "".join(draw(st.lists(st.sampled_from(_TOKENS), min_size=0, max_size=14)))
    else:
        name = draw(st.sampled_from(["channel-prune", "sparsify", "share-weights", "fold-bn"]))
        opts = draw(st.dictionaries(
            st.sampled_from(["ratio", "criterion", "scope", "sparsity", "pattern", "bits",
                             "exclude", "tolerance", "round-to", "min-channels", "plot",
                             "target-macs", "block", "nope"]),
            st.sampled_from(["0", "0.5", "1", "2", "-1", "nan", "inf", "l2", "obs", "global",
                             "2:4", "4:2", "0:0", "16x1", "0x0", "[conv1]", "[", "p.png",
                             "m.onnx", "x", ""]), max_size=4))
        text = name + ("{" + ",".join(f"{k}={v}" for k, v in opts.items()) + "}" if opts else "")
    argv = ["{m.onnx}", "--pass", text, "--report", "{r.json}"]
    if draw(st.booleans()):
        argv += ["--calib", "random:4"]
    return Case({"m.onnx": MODEL_BYTES}, argv, ["r.json", "p.png"], note=text[:40])


# --- output paths ---------------------------------------------------------------------------

_PATHS = ["{m.onnx}", "{d/../m.onnx}", "{link.onnx}", "{hard.onnx}", "{out.onnx}", "{r.json}",
          "{d}", "{d/x/y/z.onnx}", "{file/x.onnx}", "-", "/dev/null", "{dangling}",
          "{art}", "{art/meta.json}", "{" + "n" * 240 + ".onnx}", "{w.bin}", ""]


@st.composite
def path_cases(draw: st.DrawFn) -> Case:
    proto = base_model()
    files: dict[str, bytes | tuple[str, str]] = {
        "d": ("dir", ""), "file": b"a file", "link.onnx": ("symlink", "m.onnx"),
        "hard.onnx": ("hardlink", "m.onnx"), "dangling": ("symlink", "nowhere"),
    }
    if draw(st.booleans()):
        init = proto.graph.initializer[0]
        raw = numpy_helper.to_array(init).tobytes()
        files["w.bin"] = raw
        init.ClearField("raw_data")
        del init.float_data[:]
        init.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "w.bin"), ("offset", "0"), ("length", str(len(raw)))):
            entry = init.external_data.add()
            entry.key, entry.value = key, value
    files["m.onnx"] = proto.SerializeToString()
    argv = ["{m.onnx}", "--pass", "channel-prune"]
    outputs: list[str] = []
    for flag in ("-o", "--report"):
        if draw(st.booleans()):
            path = draw(st.sampled_from(_PATHS))
            argv += [flag, path]
            if path.startswith("{") and path.endswith("}"):
                outputs.append(path[1:-1])
    if draw(st.integers(0, 3)) == 0:
        argv += ["--quiet"]
    return Case(files, argv, outputs)


# --- running a case --------------------------------------------------------------------------


@contextlib.contextmanager
def _captured() -> Iterator[dict[str, bytes]]:
    """stdout/stderr captured at the fd level (C++ libraries write there directly)."""
    result: dict[str, bytes] = {}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        old_out, old_err = sys.stdout, sys.stderr
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = io.TextIOWrapper(os.fdopen(os.dup(1), "wb"), write_through=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(2), "wb"), write_through=True)
        try:
            yield result
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            with contextlib.suppress(Exception):
                sys.stdout.close()
                sys.stderr.close()
            sys.stdout, sys.stderr = old_out, old_err
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            out.seek(0)
            err.seek(0)
            result["out"] = out.read()
            result["err"] = err.read()


def _materialise(folder: Path, files: dict[str, bytes | tuple[str, str]]) -> None:
    order = sorted(files, key=lambda n: (isinstance(files[n], tuple) and files[n][0] != "dir",
                                         n.count("/")))
    for name in order:
        spec = files[name]
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, bytes):
            path.write_bytes(spec)
        elif spec[0] == "dir":
            path.mkdir(exist_ok=True)
        elif spec[0] == "symlink":
            path.symlink_to(spec[1])
        elif spec[0] == "hardlink":
            if (folder / spec[1]).exists():
                os.link(folder / spec[1], path)


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[rel] = "dir"
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "special"
    return out


def _expand(argv: list[str], folder: Path) -> list[str]:
    """`{name}` -> a path in the case folder; everything else as is."""
    return [str(folder / a[1:-1]) if a.startswith("{") and a.endswith("}") and len(a) > 2
            else a for a in argv]


def run_case(case: Case, keep: bool = False) -> list[str]:
    """Run the CLI on `case`; return the promises it broke (empty: all kept)."""
    from compress_ir.cli import main

    folder = Path(tempfile.mkdtemp(prefix="cir-fuzz-"))
    try:
        _materialise(folder, case.files)
        argv = _expand(case.argv, folder)
        before = _snapshot(folder)
        code: object
        cwd = os.getcwd()
        os.chdir(folder)  # relative outputs (a pass's plot=) land in the case folder
        try:
            with _captured() as cap:
                try:
                    code = main(argv)
                except SystemExit as exc:  # argparse
                    code = exc.code
        finally:
            os.chdir(cwd)
        after = _snapshot(folder)
        return _broken(case, code, cap, before, after, folder)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def _report_status(path: Path) -> str | None:
    """The `status` of a JSON report (None when it is not a readable report)."""
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _broken(case: Case, code: object, cap: dict[str, bytes], before: dict[str, str],
            after: dict[str, str], folder: Path) -> list[str]:
    broken = []
    err = cap["err"].decode("utf-8", "replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if code not in DOCUMENTED:
        broken.append(f"exit code {code!r}" + (f": {lines[-1][:300]}" if lines else ""))
    if "Traceback" in err:
        broken.append("traceback on stderr")
    if code == 0:
        if lines:
            broken.append(f"stderr on success: {lines[0][:200]}")
    elif code != 2 or not err.startswith("usage:"):
        if len(lines) != 1 or not (lines[0].startswith("compress-ir: error: ")
                                   or lines[0].startswith("compress-ir run: error: ")):
            broken.append(f"not one error line: {lines[:3]}")
    for name, digest in before.items():
        if after.get(name) != digest and name not in case.outputs:
            broken.append(f"input changed: {name}")
    new = set(after) - set(before)
    # issue 11: the --report is written on every outcome (a CI gate reads its status);
    # on failure it is the only output allowed, and a JSON one must not claim success
    reports = {a.strip("{}") for k, a in zip(case.argv, case.argv[1:], strict=False)
               if k == "--report" and a != "-"}
    allowed = set(case.outputs) if code == 0 else reports & new
    for name in sorted(allowed if code != 0 else ()):
        if name.endswith(".json"):
            status = _report_status(folder / name)
            if status in (None, "ok"):
                broken.append(f"report {name} after failure has status {status!r}")
    allowed |= {n for n in new if any(n.startswith(o + "/") for o in allowed)}
    stray = sorted(new - allowed - {p for p in new for o in case.outputs
                                    if code == 0 and o.startswith(p + "/")})
    if stray:
        broken.append(f"stray files: {stray[:4]}")
    if code == EXIT_INTERNAL:
        broken.append("internal error (70)")
    return broken
