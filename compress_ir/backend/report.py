"""The report's `target` section and its lines in the terminal summary."""

from __future__ import annotations

from typing import Any

from compress_ir.backend.artifact import Artifact
from compress_ir.targets import TargetSpec


def target_section(spec: TargetSpec, art: Artifact, bench: dict[str, Any] | None
                   ) -> dict[str, Any]:
    """What the report JSON records about the build (see README: --target)."""
    section = {
        "spec": spec.to_dict(),
        "artifact": str(art.path),
        "artifact_bytes": art.size_bytes(),
        "library_bytes": art.library.stat().st_size,
        "build": art.meta["build"],
        "verify": art.meta["verify"],
    }
    for key in ("gpu_code", "elf_machine", "sparse", "schedule", "tuning_rpc"):
        if key in art.meta:
            section[key] = art.meta[key]
    if bench is not None:
        section["benchmark"] = bench
    return section


# benchmark entries in display order: (key in report["target"]["benchmark"], label)
BENCH_ENTRIES = (("onnxruntime_original", "onnxruntime, original"),
                 ("onnxruntime_compressed", "onnxruntime, compressed"),
                 ("tvm_original", "TVM artifact, original"),
                 ("tvm", "TVM artifact"))


def _block(block: Any) -> str:
    return block if isinstance(block, str) else "x".join(map(str, block or ()))


def _ms(entry: dict[str, Any]) -> str:
    if "median_ms" in entry:
        extra = (f", p90 {entry['p90_ms']:.3f}, CV {entry['cv']:.0%}" if "p90_ms" in entry
                 else "")
        return f"{entry['median_ms']:.3f} ms (min {entry['min_ms']:.3f}{extra})"
    return f"not run: {entry.get('reason', '?')}"


def format_target(section: dict[str, Any]) -> list[str]:
    """Terminal lines for the `target` section."""
    spec, build = section["spec"], section["build"]
    lines = [
        "",
        f"target {spec['name']}: {spec['description']}",
        f"  artifact {section['artifact']} ({section['artifact_bytes'] / 1e6:.2f} MB), "
        f"built in {build['seconds']['total']:.1f} s",
    ]
    v = section["verify"]
    if v.get("ran"):
        lines.append(f"  verify vs onnxruntime ({v['where']}): rel. error {v['rel_error']:.2e} "
                     f"(tolerance {v['tolerance']:.0e}) {'ok' if v['ok'] else 'FAILED'}")
    else:
        lines.append(f"  verify: not run ({v.get('reason', '?')})")
    sched = section.get("schedule")
    if sched and sched.get("counts"):
        counts = ", ".join(f"{k} {n}" for k, n in sorted(sched["counts"].items()))
        lines.append(f"  schedules: {counts}")
    sparse = section.get("sparse")
    if sparse is not None:
        done = sparse.get("rewritten", [])
        kinds = sorted({f"{r['format']} {_block(r.get('block'))}" for r in done})
        lines.append(f"  sparse kernels: {len(done)} layers rewritten ({', '.join(kinds) or '-'}),"
                     f" {len(sparse.get('skipped', []))} kept dense")
    bench = section.get("benchmark")
    if bench:
        lines.append(f"  latency (median of {bench['repeat']}):")
        for key, label in BENCH_ENTRIES:
            if key in bench:
                where = bench[key].get("where", "local")
                lines.append(f"    {label:26}{_ms(bench[key])}"
                             + ("" if where == "local" else f" on {where}"))
        ratios = ", ".join(f"{k}={v}" for k, v in bench["ratios"].items() if v is not None)
        if ratios:
            lines.append(f"    ratios: {ratios}")
        env = bench.get("environment")
        if env:
            lines.append(f"    on {env['cpu']} ({env['cpu_count']} cores), "
                         f"{bench.get('method', '')}")
        for warning in bench.get("warnings", []):
            lines.append(f"    warning: {warning}")
    return lines
