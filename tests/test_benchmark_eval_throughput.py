"""Smoke test of benchmarks/eval_throughput.py: the --quick run (tiny DDPM++, digits, batch 4, tol 1e-3).

Both sides — ``training.evaluate.ode_nll`` in graph and the ScoreFlow-style scipy RK45 host loop —
must give finite bits/dim that agree within the tolerance-implied bound, positive finite throughputs,
and no compilation during the timed calls. The host loop must use exactly the Hutchinson probes that
``ode_nll`` draws (checked on a linear score whose Hutchinson estimate depends on the probe signs,
at tight tolerance), and the channels-last rewrite of the network must compute the same function.
"""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("eval_throughput")


def test_quick_run_agrees_and_is_positive(bench):
    t0 = time.perf_counter()
    res = bench.main(["--quick"])
    elapsed = time.perf_counter() - t0
    assert res["rows"], res
    for r in res["rows"]:
        assert r["batch"] == 4 and r["tol"] == 1e-3
        for side in (r["ingraph"], r["scipy"]):
            assert math.isfinite(side["images_per_s"]) and side["images_per_s"] > 0, side["side"]
            assert math.isfinite(side["images_per_cpu_s"]) and side["images_per_cpu_s"] > 0, side["side"]
            assert side["nfe"] > 0 and side["compiles_in_timed"] == 0, side["side"]
            assert np.all(np.isfinite(side["bpd"])), side["side"]
        assert math.isfinite(r["ratio_wall"]) and r["ratio_wall"] > 0
        # same network, same probes, same data: only solver error separates the two bits/dim
        assert r["bpd_diff_max"] <= r["tol_implied_bpd"], r
        assert abs(r["bpd_diff_mean"]) <= r["tol_implied_bpd"], r
    print(f"--quick run: {elapsed:.1f} s")


def test_host_loop_uses_the_probes_of_ode_nll(bench):
    # linear score s(x) = (B − I) x with B symmetric and zero on the diagonal: the one-probe
    # Hutchinson estimate −D + vᵀBv depends on the probe signs, so other probes change log p by O(1)
    from training.evaluate import ode_nll

    import numerics

    sde = numerics.VPSDE(t_min=1e-5)
    d = 4
    b = 0.4 * (jnp.ones((d, d)) - jnp.eye(d))

    def score(x, t):
        z = x.reshape(-1)
        return ((b - jnp.eye(d)) @ z).reshape(x.shape)

    x = jax.random.normal(jax.random.key(0), (3, 1, 2, 2), jnp.float64)
    key = jax.random.key(7)
    tol = 1e-9
    ours = ode_nll(score, sde, x, key=key, divergence="hutchinson", n_probes=1, rtol=tol, atol=tol).values
    same = bench.ScipyHostLoop(score, sde, x, bench.hutchinson_probes(key, x, jnp.float64))
    other = bench.ScipyHostLoop(score, sde, x, bench.hutchinson_probes(jax.random.key(8), x, jnp.float64))
    nll_same = -same.solve(tol)[0]
    nll_other = -other.solve(tol)[0]
    np.testing.assert_allclose(nll_same, ours, rtol=0, atol=1e-5)
    assert np.max(np.abs(nll_other - ours)) > 0.1  # the check above can tell probes apart


def test_channels_first_convs_compute_the_same_network(bench):
    # a tiny DDPM++ with every kind of layer (attention at 4×4, a resampling block, 1×1 skips)
    spec = bench.CaseSpec("tiny", "digits", 2, 8, (1, 2), 1, (4,))
    case = bench.build_case(spec, seed=0)
    nhwc = case.model_for("nhwc").net
    nchw, n_swapped = bench.to_channels_first_convs(nhwc)
    assert n_swapped > 0
    x = case.x[:2].astype(jnp.float32)
    for t in (1e-5, 0.3, 1.0):
        a = bench.batched_eps(nchw, x, jnp.float32(t))
        b = bench.batched_eps(nhwc, x, jnp.float32(t))
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-5)
    # the perturbed network is non-trivial: unit RMS output at t = 0.5, time projections left at zero
    eps = bench.batched_eps(nchw, case.x.astype(jnp.float32), jnp.float32(0.5))
    assert float(jnp.sqrt(jnp.mean(eps**2))) == pytest.approx(1.0, rel=1e-4)
    assert all(not bool(jnp.any(blk.temb_proj.weight != 0)) for blk in nchw.down if hasattr(blk, "temb_proj"))
    imgs = bench.cifar_like_images(3, seed=1)
    assert imgs.shape == (3, 3, 32, 32) and imgs.dtype == np.uint8 and 20 < imgs.std() < 120
