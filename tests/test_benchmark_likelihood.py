"""Smoke test of benchmarks/likelihood.py: one tiny case, one tolerance per method.

Both the in-graph likelihood and the ScoreFlow-style scipy solve must give a finite worst-case
error below 1e-2 nats against the exact mixture log-density (an independent truth), and the
frontier comparison helpers must behave on a hand-made frontier.
"""

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "likelihood.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("benchmarks_likelihood_under_test", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_tiny_case_both_methods_accurate(bench):
    case = bench.demo_case(4, seed=0)
    ours = bench.measure_ours(case, [1e-5], max_reps=1, budget_s=0.0)
    sp = bench.measure_scipy(case, [1e-7], max_reps=1, budget_s=0.0)
    for p in (*ours, *sp):
        assert math.isfinite(p["max_err"]) and p["max_err"] < 1e-2, p
        assert p["compiles_in_timed"] == 0, p
        assert p["time_s"] > 0 and p["nfe_max"] > 0
    # truth is independent of both solvers: the exact mixture density at t_min
    exact = np.asarray(case.mixture.diffuse(case.sde, case.sde.t_min).log_prob(case.x))
    np.testing.assert_allclose(case.exact, exact)


def test_frontier_interpolation(bench):
    # time ∝ err^(-1/2) for "ours", 4× that for "scipy": ratio 4 at every common level
    ours = [dict(max_err=e, time_s=e**-0.5) for e in (1e-2, 1e-4, 1e-6)]
    sp = [dict(max_err=e, time_s=4 * e**-0.5) for e in (1e-1, 1e-3, 1e-5)] + [dict(max_err=1e-3, time_s=1e9)]
    assert bench.pareto(sp) == [(1e-5, 4 * 1e-5**-0.5), (1e-3, 4 * 1e-3**-0.5), (1e-1, 4 * 1e-1**-0.5)]
    rows = bench.compare_frontiers(ours, sp)
    assert [r["error"] for r in rows] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2])
    for r in rows:
        assert r["ratio"] == pytest.approx(4.0)
    assert math.isnan(bench.interp_time(ours, 1e-8))
