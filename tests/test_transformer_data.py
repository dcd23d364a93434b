"""`tools/transformer_data.py`: the large evaluation never shares text with calibration."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import transformer_data as td  # noqa: E402


def test_large_pairs_hold_the_test_split_and_no_calibration_or_dev_text() -> None:
    test, pool = td.split(500)
    large = td.large_pairs()
    assert len(large) > 5 * len(test)
    names = {d.name for d in large}
    assert {d.name for d in test} <= names
    pool_text = {t for d in pool for t in (d.name, d.summary, d.body)}
    assert not any({d.name, d.summary, d.body} & pool_text for d in large)
    assert len({d.summary for d in large}) == len(large)  # queries are distinct
    assert {d.name.split(".")[0] for d in large} >= {"numpy", "networkx", "json"}
    assert not any(d.name.split(".")[0] in td.LARGE_DENY for d in large)


def test_large_pairs_do_not_depend_on_what_this_process_imported(monkeypatch) -> None:  # noqa: ANN001
    """A library that patches another's class (transformers adds Logger.info_once) must not
    change the evaluation set: it is collected in a fresh interpreter."""
    import networkx

    def patched_helper(self) -> None:  # noqa: ANN001
        """A documented method that only a patched process would see.

        It is long enough to pass the docstring filter of transformer_data, with a body of
        more than twelve words so that it would become an evaluation pair if collected.
        """

    before = [d.name for d in td.large_pairs()]
    monkeypatch.setattr(networkx.Graph, "patched_helper", patched_helper, raising=False)
    after = [d.name for d in td.large_pairs()]
    assert after == before
    # in this process the patch is visible: the fresh interpreter is what keeps it out
    assert any(d.name.endswith("Graph.patched_helper") for d in td._large_pairs_here())


def test_domain_halves_keep_calibration_text_out_of_the_scored_pairs() -> None:
    import calib_domain_transformer as cd

    docs = [td.Docstring(f"{pkg}.f{i}", f"s {pkg} {i}", f"b {pkg} {i}")
            for pkg in ("json", "numpy", "networkx") for i in range(200)]
    part_a, part_b = cd.halves(docs)
    assert {d.name for d in part_a}.isdisjoint({d.name for d in part_b})
    assert len(part_a) + len(part_b) == len(docs)
    assert all(cd.package(d) != "stdlib" for d in part_a)  # stdlib pairs are always scored
    assert sum(cd.package(d) == "stdlib" for d in part_b) == 200
    assert 120 < len(part_a) < 280  # about half of the 400 package pairs


def test_extra_docstrings_share_no_text_with_the_evaluation_or_the_pool() -> None:
    """`distill`'s extra calibration text (scipy, scikit-learn, sympy) leaks nothing that
    is scored or that calibrates the benchmark's other rows."""
    import importlib.util

    import pytest

    if any(importlib.util.find_spec(p) is None for p in td.EXTRA_PACKAGES):
        pytest.skip(f"needs {', '.join(td.EXTRA_PACKAGES)} (the bench extras)")
    extra = td.extra_docstrings()
    assert len(extra) > 1000
    assert {d.name.split(".")[0] for d in extra} == set(td.EXTRA_PACKAGES)
    _, pool = td.split(500)
    taken = {t for d in (*pool, *td.large_pairs()) for t in (d.summary, d.body)}
    assert not any({d.summary, d.body} & taken for d in extra)
