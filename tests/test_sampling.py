"""numerics.sampling: reverse-SDE, predictor–corrector and probability-flow ODE samplers against exact mixtures."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import numerics
from numerics import sampling as smp
from numerics.likelihood import SolverError, ode_log_likelihood

W, MU, VAR = np.array([0.4, 0.6]), np.array([-1.0, 1.5]), np.array([0.3, 0.2])
N = 4000


def _mix1():
    return numerics.GaussianMixture.from_diagonal(W, MU, VAR)


def _exact_1d(sde, t):
    """Mean, variance and CDF of the exact marginal q_t of the 1-D mixture (THEORY.md §6.3)."""
    a, v = float(sde.mean_coeff(t)), float(sde.variance(t))
    m, var = a * MU, a * a * VAR + v
    mean = W @ m
    return mean, W @ (var + m * m) - mean**2, lambda x: sum(w * stats.norm(mi, math.sqrt(vi)).cdf(x) for w, mi, vi in zip(W, m, var))


SDES = {"vp": numerics.VPSDE(t_min=1e-3), "ve": numerics.VESDE(t_min=1e-3)}
# (sampler, sde, bias allowance on the mean and variance): the ODE transports exact q_T samples, so only MC error
# remains; EM (500 steps) and PC (200 steps, r = 0.16) have O(1/n) discretisation bias, measured at ≈ 0.02 in the
# mean and ≈ 1% in the variance (20000 samples) and allowed for explicitly.
CASES = [("ode", "vp", 0.0, 0.0), ("em", "vp", 0.02, 0.03), ("pc", "vp", 0.03, 0.04), ("pc", "ve", 0.03, 0.04)]


@pytest.mark.parametrize(("sampler", "kind", "tol_mean", "tol_var"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_samples_match_exact_marginal(sampler, kind, tol_mean, tol_var):
    """From exact q_T samples and the exact score, samples match q_{t_min}: mean and variance within 3 SE (+ the
    stated discretisation allowance) and a Kolmogorov–Smirnov test against the exact mixture CDF (p > 1e-3)."""
    sde, mix = SDES[kind], _mix1()
    x_T = mix.diffuse(sde, sde.T).sample(jax.random.key(0), N)
    score = mix.score_fn(sde)
    key = jax.random.key(1)
    if sampler == "ode":
        x = smp.ode_sample(score, sde, x_T).samples
    elif sampler == "em":
        x = smp.euler_maruyama_sample(score, sde, x_T, key, n_steps=500)
    else:
        x = smp.predictor_corrector_sample(score, sde, x_T, key, n_steps=200, n_corrector=1, snr=0.16)
    x = np.asarray(x)[:, 0]
    mean, var, cdf = _exact_1d(sde, sde.t_min)
    se_mean = x.std(ddof=1) / math.sqrt(N)
    se_var = ((x - x.mean()) ** 2).std(ddof=1) / math.sqrt(N)
    assert abs(x.mean() - mean) < 3 * se_mean + tol_mean
    assert abs(x.var(ddof=1) - var) < 3 * se_var + tol_var * var
    assert stats.kstest(x, cdf).pvalue > 1e-3
    # the start itself is far from the target, so the test is not vacuous
    assert stats.kstest(np.asarray(x_T)[:, 0], cdf).pvalue < 1e-6


def test_euler_maruyama_is_not_for_li_yan_sde_as_documented():
    """The limitation stated in euler_maruyama_sample's docstring: the O(1/n) bias needs g² bounded on [t_min, T].
    Li & Yan's g² = 1/(1 − t) is ≈ 10⁶ at T = 1 − 10⁻⁶, so with the exact score of N(0.7, 0.16) EM at 1000 steps
    gives a sample variance many times the exact q_{t_min}'s (≈ 2.2 vs 0.16), while the recommended
    predictor–corrector sampler (exact-kernel predictor) matches it within 3 SE + 5%."""
    sde, mix = numerics.LiYanSDE(), numerics.GaussianMixture.from_diagonal([1.0], [0.7], [0.16])
    score, x_T = mix.score_fn(sde), sde.prior_sample(jax.random.key(0), (2000, 1))
    var = 0.16 * (1 - sde.t_min) + sde.t_min  # exact q_{t_min}: α² s² + σ², α² = 1 − t, σ² = t
    em = np.asarray(smp.euler_maruyama_sample(score, sde, x_T, jax.random.key(1), n_steps=1000))[:, 0]
    pc = np.asarray(smp.predictor_corrector_sample(score, sde, x_T, jax.random.key(1), n_steps=1000, n_corrector=0))[:, 0]
    assert em.var(ddof=1) > 5 * var
    se_var = ((pc - pc.mean()) ** 2).std(ddof=1) / math.sqrt(pc.size)
    assert abs(pc.var(ddof=1) - var) < 3 * se_var + 0.05 * var


def test_ode_sampler_inverts_the_likelihood_map():
    """ODE-sample z ↦ x at tight tolerance, then ode_log_likelihood's forward map x ↦ latent returns z (1e-6),
    and its log-density is the exact log q_{t_min}(x) (2-D, 3-component mixture, VP)."""
    mix = numerics.GaussianMixture(
        [0.3, 0.5, 0.2], [[0.0, 1.0], [1.5, -1.0], [-1.2, -0.4]],
        [[[0.5, 0.1], [0.1, 0.3]], [[0.2, 0.0], [0.0, 0.4]], [[0.3, -0.1], [-0.1, 0.2]]],
    )
    sde = numerics.VPSDE(t_min=1e-3)
    q_T = mix.diffuse(sde, sde.T)
    z = q_T.sample(jax.random.key(2), 6)
    score = mix.score_fn(sde)
    res = smp.ode_sample(score, sde, z, rtol=1e-10, atol=1e-10)
    assert np.all(np.asarray(res.nfe) > 0)
    lik = ode_log_likelihood(score, sde, res.samples, rtol=1e-10, atol=1e-10, prior_log_prob=q_T.log_prob)
    np.testing.assert_allclose(lik.latent, z, atol=1e-6)
    np.testing.assert_allclose(lik.log_prob, mix.diffuse(sde, sde.t_min).log_prob(res.samples), atol=1e-6)
    assert float(jnp.max(jnp.abs(res.samples - z))) > 0.1  # the map is not the identity


def test_denoise_is_the_exact_tweedie_mean():
    """denoise=True returns E[x_0 | x_{t_min}] = the mixture's exact denoiser of the undenoised output (same key;
    all samplers share :func:`tweedie_denoise`)."""
    sde, mix = SDES["vp"], _mix1()
    x_T = mix.diffuse(sde, sde.T).sample(jax.random.key(3), 64)
    score = mix.score_fn(sde)
    raw = smp.euler_maruyama_sample(score, sde, x_T, jax.random.key(4), n_steps=20)
    den = smp.euler_maruyama_sample(score, sde, x_T, jax.random.key(4), n_steps=20, denoise=True)
    np.testing.assert_allclose(den, mix.denoiser(sde, sde.t_min, raw), rtol=1e-10, atol=1e-12)


def test_failures_raise():
    sde, mix = SDES["vp"], _mix1()
    x_T = mix.diffuse(sde, sde.T).sample(jax.random.key(5), 3)
    bad_score = lambda x, t: jnp.where(t < 0.5, jnp.nan, 1.0) * x  # noqa: E731
    with pytest.raises(SolverError, match="non-finite"):
        smp.ode_sample(bad_score, sde, x_T)
    with pytest.raises(SolverError, match="max_steps"):
        smp.ode_sample(mix.score_fn(sde), sde, x_T, max_steps=2)
    with pytest.raises(ValueError, match="x_T"):
        smp.euler_maruyama_sample(mix.score_fn(sde), sde, x_T[0], jax.random.key(0))
    # the fixed-step samplers: a NaN score along the chain (it used to come back as NaN samples), a NaN start
    for sample in (smp.euler_maruyama_sample, smp.predictor_corrector_sample):
        with pytest.raises(SolverError, match=r"non-finite samples \(NaN or inf\) in 3 of 3 rows, from a finite x_T"):
            sample(bad_score, sde, x_T, jax.random.key(1), n_steps=10)
        with pytest.raises(ValueError, match="x_T contains NaN or inf in 1 of 3 samples"):
            sample(mix.score_fn(sde), sde, x_T.at[1, 0].set(jnp.nan), jax.random.key(1), n_steps=10)
        with pytest.raises(RuntimeError, match="non-finite samples"):  # inside a caller's jit: equinox's error
            jax.block_until_ready(eqx.filter_jit(lambda x: sample(bad_score, sde, x, jax.random.key(1), n_steps=10))(x_T))
    with pytest.raises(ValueError, match="x_T contains NaN"):
        smp.ode_sample(mix.score_fn(sde), sde, x_T.at[0, 0].set(jnp.inf))
    with pytest.raises(ValueError, match="n_steps"):
        smp.predictor_corrector_sample(mix.score_fn(sde), sde, x_T, jax.random.key(0), n_steps=0)
    with pytest.raises(ValueError, match="snr"):
        smp.predictor_corrector_sample(mix.score_fn(sde), sde, x_T, jax.random.key(0), snr=0.0)


def test_float32_samplers_follow_the_input_dtype():
    """float32 start ⇒ float32 samples; the deterministic ODE sampler agrees with its float64 run (the stochastic
    samplers draw different noise bits per dtype, so only their dtype and finiteness are compared)."""
    sde, mix = SDES["vp"], _mix1()
    x_T = mix.diffuse(sde, sde.T).sample(jax.random.key(6), 16)
    score = mix.score_fn(sde)
    x32 = x_T.astype(jnp.float32)
    out = smp.predictor_corrector_sample(score, sde, x32, jax.random.key(7), n_steps=20)
    assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out)))
    lo = smp.ode_sample(score, sde, x32).samples
    hi = smp.ode_sample(score, sde, x_T).samples
    assert lo.dtype == jnp.float32
    np.testing.assert_allclose(lo, hi, rtol=0, atol=1e-2)  # solver tolerance 1e-5, float32 rounding
