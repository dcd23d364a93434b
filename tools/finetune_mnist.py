"""Prune hard, fine-tune in PyTorch, re-export: the plan back to training, on real MNIST.

Why: channel pruning at 10-30 % of the MACs costs accuracy that only training gets
back (Li et al. 2017, Torch-Pruning). compress-ir prunes the exported ONNX graph;
its `--plan` says which channels of which module went, and
`compress_ir.frontends.torch.apply_plan` turns that into a physically smaller
`nn.Module` to fine-tune. This tool runs that loop end to end and measures:

1. train a small MNIST CNN in torch (tools/train_mnist_models.py's model and
   recipe; cached in --work so reruns skip it),
2. for each MACs budget: `frontends.torch.compress(model, x, "channel-prune{
   criterion=l2,target-macs=R}", plan=...)` -> test accuracy of the pruned ONNX
   (onnxruntime),
3. `apply_plan(model, plan, x)` -> a pruned nn.Module; its test accuracy must equal
   the pruned ONNX model's (same channels, same weights),
4. fine-tune it for --epochs epochs -> `frontends.torch.export` -> test accuracy of
   the re-exported ONNX (onnxruntime), optionally compiled with TVM (--compile x86).

    pip install -e ".[torch,bench]"
    python tools/finetune_mnist.py                       # plain CNN, budgets 0.5 0.3 0.12
    python tools/finetune_mnist.py --model resnet --budgets 0.5 0.25 0.1 --epochs 2

Writes tools/results/finetune/<model>.json and table.md (see the README there).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train_mnist_models.py

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_data import load_mnist  # noqa: E402
from train_mnist_models import SPECS, evaluate, seed_everything, train  # noqa: E402

from compress_ir.core.metrics import model_metrics  # noqa: E402
from compress_ir.frontends.torch import apply_plan, compress, export_proto  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "finetune"
warnings.filterwarnings("ignore", message=".*(legacy TorchScript|will be removed|constant "
                        "folding|training mode).*")


def ort_accuracy(proto_bytes: bytes, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of an ONNX model under onnxruntime (the deployed numbers)."""
    sess = ort.InferenceSession(proto_bytes, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        (logits,) = sess.run(None, {name: x[i : i + batch]})
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def base_model(name: str, work: Path, x: np.ndarray, y: np.ndarray, seed: int) -> torch.nn.Module:
    """The trained starting point, cached as a state dict in `work`."""
    build, epochs, lr, _ = SPECS[name]
    seed_everything(seed)
    model = build()
    cache = work / f"mnist_{name}_seed{seed}.pt"
    if cache.is_file():
        model.load_state_dict(torch.load(cache, weights_only=True))
    else:
        print(f"training {name}: {epochs} epochs", flush=True)
        train(model, x, y, epochs, lr, seed)
        torch.save(model.state_dict(), cache)
    return model.eval()


def compile_check(proto_bytes: bytes, target: str, work: Path) -> dict:
    """Compile the fine-tuned model with TVM; the build is verified against onnxruntime."""
    from compress_ir.api import compress as compress_onnx
    from compress_ir.core.errors import CompressIRError

    path = work / "finetuned.onnx"
    path.write_bytes(proto_bytes)
    try:
        result = compress_onnx(str(path), None, target=target, artifact=work / f"ft.{target}")
    except CompressIRError as exc:  # recorded in the results, not hidden
        return {"error": str(exc)}
    return result.report["target"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=sorted(SPECS), default="plain_cnn")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.3, 0.12],
                    help="fractions of the MACs to keep")
    ap.add_argument("--criterion", default="l2")
    ap.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs")
    ap.add_argument("--lr", type=float, default=2e-3, help="fine-tuning peak learning rate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "finetune_mnist")
    ap.add_argument("--compile", metavar="TARGET", help="also compile with TVM, e.g. x86")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    model = base_model(args.model, args.work, x_train, y_train, args.seed)
    example = (torch.from_numpy(x_test[:2]),)
    original = export_proto(model, example, dynamic_axes={"input": {0: "batch"}})
    base_macs = model_metrics(original)["macs"]
    base_acc = ort_accuracy(original.SerializeToString(), x_test, y_test)
    print(f"{args.model}: {base_macs} MACs, test accuracy {base_acc:.4f}", flush=True)
    rows = []
    for budget in args.budgets:
        t0 = time.perf_counter()
        plan_path = args.work / f"plan_{args.model}_{budget}.json"
        pipeline = f"channel-prune{{criterion={args.criterion},target-macs={budget}}}"
        result = compress(model, example, pipeline, dynamic_axes={"input": {0: "batch"}},
                          plan=plan_path)
        pruned_acc = ort_accuracy(result.model.SerializeToString(), x_test, y_test)
        small = apply_plan(model, plan_path, example)
        torch_pruned_acc = evaluate(small, x_test, y_test)
        seed_everything(args.seed)
        train(small, x_train, y_train, args.epochs, args.lr, args.seed)
        tuned = export_proto(small.eval(), example, dynamic_axes={"input": {0: "batch"}})
        tuned_acc = ort_accuracy(tuned.SerializeToString(), x_test, y_test)
        row = {
            "target_macs": budget,
            "macs_ratio": round(model_metrics(tuned)["macs"] / base_macs, 4),
            "params_ratio": round(result.report["ratios"]["params"], 4),
            "acc_original": base_acc,
            "acc_pruned_onnx": pruned_acc,
            "acc_pruned_torch": torch_pruned_acc,
            "acc_finetuned_onnx": tuned_acc,
            "torch_params": sum(p.numel() for p in small.parameters()),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if args.compile:
            row["compiled"] = compile_check(tuned.SerializeToString(), args.compile, args.work)
            print(f"  compiled for {args.compile}: "
                  f"{json.dumps(row['compiled'])[:300]}", flush=True)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "compiled"}), flush=True)
    write_results(args, base_macs, rows)


def write_results(args: argparse.Namespace, base_macs: int, rows: list[dict]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "criterion": args.criterion, "finetune_epochs": args.epochs,
            "lr": args.lr, "seed": args.seed, "threads": args.threads,
            "torch": torch.__version__, "original_macs": base_macs, "test_images": 10000}
    (args.out / f"{args.model}.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    lines = [
        f"MNIST {args.model} ({base_macs} MACs), channel-prune criterion={args.criterion}, "
        f"fine-tuned {args.epochs} epochs (Adam one-cycle, lr {args.lr}), test accuracy on "
        "10 000 images:",
        "",
        "| target MACs | MACs kept | params kept | before pruning | after pruning | "
        "after fine-tuning |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['target_macs']} | {r['macs_ratio']:.3f} | {r['params_ratio']:.3f} | "
                     f"{r['acc_original']:.4f} | {r['acc_pruned_onnx']:.4f} | "
                     f"{r['acc_finetuned_onnx']:.4f} |")
    table = args.out / "table.md"
    old = table.read_text() if table.is_file() else ""
    marker = f"<!-- {args.model} -->"
    blocks = [b for b in old.split("\n\n\n") if b.strip() and not b.startswith(marker)]
    blocks.append("\n".join([marker, *lines]))
    table.write_text("\n\n\n".join(blocks) + "\n")


if __name__ == "__main__":
    main()
