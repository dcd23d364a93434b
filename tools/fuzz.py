"""Long fuzz run of the CLI's promises (issue 10): many random cases per family.

    python tools/fuzz.py                       # 2,000 cases per family (10,000 total)
    python tools/fuzz.py --cases 200 --family onnx --seed 3
    python tools/fuzz.py --out tools/results/fuzz.json

The families and the promises are those of tests/test_fuzz.py (tests/fuzz_cases.py);
here hypothesis is not derandomised and a broken promise is recorded, not raised,
so one run counts every case. Prints, per family, the cases run, the exit codes
seen and the broken promises (with the argv to reproduce them).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_cases import (  # noqa: E402 - tests/ is put on the path first
    FAMILIES,
    Case,
    base_model,
    calib_cases,
    meta_cases,
    onnx_cases,
    path_cases,
    pipeline_cases,
    run_case,
)
from hypothesis import HealthCheck, given, settings  # noqa: E402


def _meta_strategy():  # noqa: ANN202 - a hypothesis strategy
    from compress_ir.backend import build

    with tempfile.TemporaryDirectory() as tmp:
        art = build(base_model(), "x86", Path(tmp) / "art")
        return meta_cases((art.path / "meta.json").read_text(),
                          (art.path / "model.so").read_bytes())


STRATEGIES = {"onnx": onnx_cases, "calib": calib_cases, "pipeline": pipeline_cases,
              "paths": path_cases, "meta": _meta_strategy}


def run_family(family: str, cases: int, seed: int | None) -> dict:
    """Run `cases` random cases of one family; return counts and broken promises."""
    strategy = STRATEGIES[family]()
    stats: dict = {"cases": 0, "exit_codes": collections.Counter(), "broken": []}
    t0 = time.perf_counter()

    @settings(max_examples=cases, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def body(case: Case) -> None:
        stats["cases"] += 1
        broken = run_case(case)
        code = _last_code.get("code")
        stats["exit_codes"][str(code)] += 1
        if broken:
            stats["broken"].append({"broken": broken, "argv": case.argv, "note": case.note})

    if seed is not None:
        from hypothesis import seed as hseed

        body = hseed(seed)(body)
    body()
    stats["seconds"] = round(time.perf_counter() - t0, 1)
    stats["exit_codes"] = dict(stats["exit_codes"])
    return stats


_last_code: dict = {}


def _record_codes() -> None:
    """Wrap cli.main so each case's exit code is counted."""
    import compress_ir.cli as cli

    real = cli.main

    def main(argv: list[str] | None = None) -> int:
        try:
            code = real(argv)
        except SystemExit as exc:
            _last_code["code"] = exc.code
            raise
        _last_code["code"] = code
        return code

    cli.main = main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per family")
    parser.add_argument("--family", action="append", choices=FAMILIES)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, help="write the summary as JSON")
    args = parser.parse_args()
    _record_codes()
    summary = {}
    for family in args.family or FAMILIES:
        stats = run_family(family, args.cases, args.seed)
        summary[family] = stats
        print(f"{family:9} {stats['cases']:6} cases {stats['seconds']:7.1f} s  exit codes "
              f"{stats['exit_codes']}  broken promises {len(stats['broken'])}", flush=True)
        for item in stats["broken"][:10]:
            print(f"    {item['broken']}  argv={item['argv']}", flush=True)
    total = sum(s["cases"] for s in summary.values())
    broken = sum(len(s["broken"]) for s in summary.values())
    print(f"total    {total:6} cases, {broken} broken promises")
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
