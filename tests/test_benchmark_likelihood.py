"""Smoke test of benchmarks/likelihood.py: one tiny case, one tolerance per solver.

Every frontier — the in-graph likelihood with diffrax Tsit5 and Dopri8, the ScoreFlow-style scipy
solve with RK45 and DOP853 — must give a finite worst-case error below 1e-2 nats against the exact
mixture log-density (an independent truth) with no compilation during the timed calls; the scipy
right-hand side must be the probability-flow field (checked against an
autodiff Jacobian trace); and the frontier comparison helpers must behave on hand-made frontiers.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("likelihood")


@pytest.fixture(scope="module")
def case(bench):
    return bench.demo_case(4, seed=0)


def test_tiny_case_all_solvers_accurate(bench, case):
    points = []
    for solver in bench.OURS_SOLVERS:
        points += bench.measure_ours(case, [1e-6, 1e-5], solver=solver, max_reps=1, budget_s=0.0)
    flat = bench.ScipyFlatODE(case)
    for method in bench.SCIPY_METHODS:
        points += bench.measure_scipy(case, [1e-7], method=method, max_reps=1, budget_s=0.0, solver=flat)
    assert flat.cache_size() == 1  # one compiled right-hand side for both methods
    for p in points:
        assert math.isfinite(p["max_err"]) and p["max_err"] < 1e-2, p
        assert p["compiles_in_timed"] == 0, p  # tolerances are traced: one warm-up per solver suffices
        assert p["time_s"] > 0 and p["nfe_max"] > 0
    # truth is independent of both solvers: the exact mixture density at t_min
    exact = np.asarray(case.mixture.diffuse(case.sde, case.sde.t_min).log_prob(case.x))
    np.testing.assert_allclose(case.exact, exact)


def test_scipy_rhs_is_the_probability_flow_field(bench, case):
    flat = bench.ScipyFlatODE(case)
    n, d, sde = case.batch, case.dim, case.sde
    t = 0.3
    y = flat.initial_state()
    out = flat.fun(t, y)
    x = jnp.asarray(y[: n * d].reshape(n, d))
    f, g2 = float(sde.drift_coeff(t)), float(sde.diffusion_sq(t))
    score, div = jax.jit(jax.vmap(lambda z: (case.score_fn(z, t), jnp.trace(jax.jacfwd(case.score_fn)(z, t)))))(x)
    np.testing.assert_allclose(out[: n * d], (f * x - 0.5 * g2 * score).reshape(-1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out[n * d:], d * f - 0.5 * g2 * div, rtol=1e-10, atol=1e-10)


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


def test_best_of_frontier(bench):
    # "a" is fast at loose errors, "b" at tight ones; the best-of frontier takes the faster member
    # at each level and spans the union of their ranges
    a = [dict(max_err=e, time_s=t) for e, t in ((1e-2, 1.0), (1e-4, 10.0))]
    b = [dict(max_err=e, time_s=t) for e, t in ((1e-3, 4.0), (1e-6, 8.0))]
    sp = [dict(max_err=e, time_s=t) for e, t in ((1e-1, 10.0), (1e-7, 100.0))]
    assert bench.best_time({"a": a, "b": b}, 1e-2) == (1.0, "a")
    assert bench.best_time({"a": a, "b": b}, 1e-4) == pytest.approx((bench.interp_time(b, 1e-4), "b"))
    assert bench.error_range({"a": a, "b": b}) == (1e-6, 1e-2)
    rows = bench.compare_frontiers({"a": a, "b": b}, sp)
    assert [r["error"] for r in rows] == pytest.approx([1e-6, 1e-5, 1e-4, 1e-3, 1e-2])
    assert [r["ours_solver"] for r in rows] == ["b", "b", "b", "a", "a"]  # at 1e-3: a ≈ √10 s < b = 4 s
    assert rows[-1]["ratio"] == pytest.approx(bench.interp_time(sp, 1e-2) / 1.0)


def test_dominated_loose_point_still_bounds_the_loose_levels(bench):
    # the loosest tolerance (error 1e-2) measured no faster than a tighter one (error 1e-3): it leaves
    # the Pareto frontier, but the 1e-3 solve reaches error 1e-2 too, so the 1e-2 level is compared
    # with the frontier's fastest time; beyond the loosest error measured there is no figure
    ours = [dict(max_err=1e-2, time_s=2.0), dict(max_err=1e-3, time_s=1.5), dict(max_err=1e-5, time_s=3.0)]
    assert bench.pareto(ours) == [(1e-5, 3.0), (1e-3, 1.5)]
    assert bench.interp_time(ours, 1e-2) == 1.5
    assert bench.interp_time(ours, 5e-3) == 1.5
    assert math.isnan(bench.interp_time(ours, 2e-2))
    assert bench.error_range(ours) == (1e-5, 1e-2)
    sp = [dict(max_err=e, time_s=10.0 * e**-0.5) for e in (1e-1, 1e-3, 1e-5)]
    rows = bench.compare_frontiers(ours, sp)
    assert [r["error"] for r in rows] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2])
    assert rows[-1]["ratio"] == pytest.approx(10.0 * 1e-2**-0.5 / 1.5)
