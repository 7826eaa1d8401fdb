"""docs/scaling.md: the ring all-reduce arithmetic, and the doc's table is what scripts/scaling.py computes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from risbench.config import PROJECT_ROOT
from risbench.scaling import ring_allreduce_seconds, scale, scaling_rows


def test_ring_allreduce_and_overlap_bounds():
    assert ring_allreduce_seconds(1e9, 2, 1e9) == pytest.approx(1.0)  # 2 (N-1)/N = 1
    assert ring_allreduce_seconds(1e9, 64, 1e9) == pytest.approx(2 * 63 / 64)
    assert ring_allreduce_seconds(1e9, 1, 1e9) == 0.0
    s = scale(0.3, 8, 0.3, 4)  # backward 0.2 s hides 0.2 of the 0.3 s all-reduce
    assert s["step_ms_no_overlap"] == pytest.approx(600) and s["efficiency_no_overlap"] == pytest.approx(0.5)
    assert s["step_ms_overlap"] == pytest.approx(400) and s["efficiency_overlap"] == pytest.approx(0.75)
    assert s["images_per_s_overlap"] == pytest.approx(4 * 8 / 0.4)
    rows = scaling_rows(1000, {8: 0.1, 16: 0.15, 32: 0.2})
    assert {r["batch"] for r in rows} == {8, 32} and len(rows) == 16
    assert {r["grad_mb"] for r in rows} == {0.004, 0.002}


def test_scaling_doc_table_is_computed():
    done = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "scripts" / "scaling.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
