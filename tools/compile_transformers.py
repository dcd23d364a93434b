"""Build the corpus transformers, head/FFN-pruned, for x86, arm and cuda (issue 14).

    python tools/compile_transformers.py --targets x86,arm,cuda [--out table.md]

Every `transformers` export of `tests/fixtures/real/` (both torch exporters; random
seeded weights) is pruned with `channel-prune{ratio=0.5}` (checked against the masked
oracle) and built with TVM at batch 1, sequence 16. x86 artifacts are verified against
onnxruntime here; arm and cuda artifacts are cross-built (this host has no aarch64 CPU
and no GPU): an arm artifact runs under qemu with `tools/arm/check_artifact.py`, a cuda
one on a GPU with `compress-ir --run`. `--qemu M1,M2` runs those arm artifacts under
qemu (needs the rootfs of `tools/arm/setup_rootfs.sh`; ~1-2 min each) and compares them
with onnxruntime on the pruned model.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import onnx

from compress_ir.api import compress
from compress_ir.frontends.placeholders import fill_placeholders

HERE = Path(__file__).resolve().parent
REAL = HERE.parent / "tests" / "fixtures" / "real"
PRUNE = "channel-prune{ratio=0.5}"
# fixture -> extra token inputs besides input_ids/attention_mask (None: an image model)
MODELS: dict[str, tuple[str, ...] | None] = {
    "bert_ts": ("token_type_ids",), "bert_dynamo": ("token_type_ids",),
    "bert_hf5_ts": ("token_type_ids",),
    "vit": None, "vit_ts": None, "gpt2": (), "gpt2_ts": (), "llama": (), "llama_ts": (),
    "mpt": (), "mpt_ts": (),
}


SEQ = 16


def shapes(extra: tuple[str, ...] | None) -> dict[str, tuple[int, ...]] | None:
    if extra is None:
        return None  # static 32x32 image, dynamic batch -> 1
    return {n: (1, SEQ) for n in ("input_ids", "attention_mask", *extra)}


def qemu_check(artifact: Path, pruned: onnx.ModelProto, work: Path) -> str:
    """Run an arm artifact under qemu against onnxruntime on the pruned model."""
    spec = importlib.util.spec_from_file_location("check_artifact",
                                                  HERE / "arm" / "check_artifact.py")
    check = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = check  # its dataclasses look their module up
    spec.loader.exec_module(check)
    model = work / f"{artifact.name}.pruned.onnx"
    onnx.save(pruned, model)
    result = check.check(artifact, model, check.DEFAULT_ROOTFS)
    worst = max(result["errors"].values())
    return f"{worst:.1e} {'ok' if result['ok'] else 'FAILED'} (qemu)"


def row(name: str, target: str, work: Path, qemu: bool = False) -> str:
    proto = fill_placeholders(onnx.load(REAL / f"{name}.onnx"), seed=0)
    start = time.perf_counter()
    try:
        kwargs = {} if shapes(MODELS[name]) is None else {"input_shapes": shapes(MODELS[name])}
        result = compress(proto, PRUNE, check=True, target=target,
                          artifact=work / f"{name}.{target}", **kwargs)
    except Exception as exc:  # noqa: BLE001 - a row says what failed
        return f"| {name} | {target} | FAILED: {str(exc).splitlines()[0][:120]} | | | |"
    seconds = time.perf_counter() - start
    rep = result.report
    verify = rep["target"].get("verify", {})
    checked = (f"{verify['rel_error']:.1e} ok" if verify.get("ran") and verify.get("ok")
               else "FAILED" if verify.get("ran") else f"not run ({verify.get('reason', '')})")
    if qemu and target == "arm":
        checked = qemu_check(work / f"{name}.{target}", result.model, work)
    return (f"| {name} | {target} | built | {rep['ratios']['macs']:.3f} | {checked} | "
            f"{seconds:.1f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="x86,arm,cuda")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--work", type=Path, default=Path("/tmp/compile_transformers"))
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    ap.add_argument("--qemu", default="", help="models whose arm artifact runs under qemu")
    ap.add_argument("--seq", type=int, default=SEQ,
                    help="token count of the text models (13: ragged, attention keys padded)")
    args = ap.parse_args(argv)
    globals()["SEQ"] = args.seq
    lines = ["| model | target | build | MACs kept | verify vs onnxruntime | seconds |",
             "|---|---|---|---:|---|---:|"]
    for name in args.models.split(","):
        for target in args.targets.split(","):
            lines.append(row(name, target, args.work, name in args.qemu.split(",")))
            print(lines[-1], flush=True)
    if args.out is not None:
        args.out.write_text("\n".join(lines) + "\n")
    return 0 if not any("FAILED" in ln for ln in lines) else 1


if __name__ == "__main__":
    sys.exit(main())
