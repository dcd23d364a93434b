"""tools/tvm_threads.py: each thread count runs in a process started with TVM_NUM_THREADS."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import tvm_threads  # noqa: E402

CHILD = '''
import argparse, json, os
ap = argparse.ArgumentParser()
ap.add_argument("--threads")
ap.add_argument("--json")
ap.add_argument("--tag")
a = ap.parse_args()
open(a.json, "w").write(json.dumps({"threads": a.threads, "tag": a.tag,
                                    "env": os.environ.get("TVM_NUM_THREADS")}))
'''


def test_each_count_runs_in_its_own_process_with_the_variable_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    got = tvm_threads.per_process([1, 2], ["--threads", "1,2", "--tag", "x"], str(script))
    assert got == [{"threads": "1", "tag": "x", "env": "1"},
                   {"threads": "2", "tag": "x", "env": "2"}]


def test_a_process_started_with_the_count_times_in_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVM_NUM_THREADS", "2")
    assert tvm_threads.per_process([2], [], "never-run.py") is None
    tvm_threads.require(2)
    with pytest.raises(SystemExit, match="TVM_NUM_THREADS=1"):
        tvm_threads.require(1)
    monkeypatch.delenv("TVM_NUM_THREADS")
    with pytest.raises(SystemExit, match="TVM_NUM_THREADS=2"):
        tvm_threads.require(2)
