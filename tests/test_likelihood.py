"""numerics.likelihood: the probability-flow ODE log-likelihood against exact mixture densities."""

import functools
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import linalg

import numerics
from numerics import strategies as nst
from numerics.likelihood import SolverError, bits_per_dim, ode_log_likelihood


@given(
    nst.mixtures(max_dim=3, max_components=3),
    nst.sdes(kinds=("vp", "subvp", "ve")),
    st.integers(0, 1000),
    st.sampled_from(["shared", "per_sample"]),
)
def test_ode_likelihood_equals_exact_log_density(mixture, sde, seed, steps):
    """Exact score and exact q_T prior ⇒ log p^ODE_{t_min}(x) = log q_{t_min}(x) (THEORY.md §2.1, §8.17), to 1e-6 nats,
    with shared (worst-case norm) and per-sample step control."""
    x = mixture.sample(jax.random.key(seed), 4)
    prior = mixture.diffuse(sde, sde.T).log_prob
    res = ode_log_likelihood(mixture.score_fn(sde), sde, x, rtol=1e-10, atol=1e-10, prior_log_prob=prior, steps=steps)
    exact = mixture.diffuse(sde, sde.t_min).log_prob(x)
    np.testing.assert_allclose(np.asarray(res.log_prob), np.asarray(exact), rtol=0, atol=1e-6)
    assert np.all(np.asarray(res.nfe) > 0)


@pytest.mark.parametrize("sde", [numerics.VPSDE(), numerics.SubVPSDE(), numerics.VESDE()], ids=["vp", "subvp", "ve"])
def test_gaussian_flow_map_is_affine(sde):
    """K = 1: the exact flow map is x_T = m_T + C_T^{1/2} C_ε^{-1/2}(x − m_ε) (THEORY.md §6.1), to 1e-8."""
    cov = np.array([[0.5, 0.2], [0.2, 0.3]])
    mu = np.array([0.7, -0.4])
    mix = numerics.GaussianMixture([1.0], [mu], [cov])
    x = mix.sample(jax.random.key(0), 3)
    res = ode_log_likelihood(mix.score_fn(sde), sde, x, rtol=1e-11, atol=1e-11, prior_log_prob=mix.diffuse(sde, sde.T).log_prob)
    c = lambda t: float(sde.mean_coeff(t)) ** 2 * cov + float(sde.variance(t)) * np.eye(2)  # noqa: E731
    m = lambda t: float(sde.mean_coeff(t)) * mu  # noqa: E731
    A = np.real(linalg.sqrtm(c(sde.T)) @ np.linalg.inv(linalg.sqrtm(c(sde.t_min))))
    expected = m(sde.T) + (np.asarray(x) - m(sde.t_min)) @ A.T
    np.testing.assert_allclose(np.asarray(res.latent), expected, rtol=1e-8, atol=1e-8)


def _hutchinson_case():
    mix = numerics.GaussianMixture(
        [0.3, 0.7], [[0.0, 1.0, -0.5], [1.5, -1.0, 0.5]], [np.diag([0.5, 0.2, 0.3]), [[0.4, 0.1, 0.0], [0.1, 0.3, 0.05], [0.0, 0.05, 0.2]]]
    )
    sde = numerics.VPSDE()
    x = mix.sample(jax.random.key(7), 6)
    return mix, sde, x, mix.diffuse(sde, sde.T).log_prob


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    """Mean of Hutchinson's estimate = exact-trace value within 3 SE (per point and pooled; THEORY.md §2.8)."""
    mix, sde, x, prior = _hutchinson_case()
    exact = ode_log_likelihood(mix.score_fn(sde), sde, x, rtol=1e-8, atol=1e-8, prior_log_prob=prior).log_prob
    res = ode_log_likelihood(
        mix.score_fn(sde), sde, x, divergence="hutchinson", n_probes=400, probe=probe, key=jax.random.key(1),
        rtol=1e-8, atol=1e-8, prior_log_prob=prior,
    )
    z = np.asarray((res.log_prob - exact) / res.stderr)
    assert np.all(np.abs(z) < 4.0), z  # 6 points: |z| < 4 each (family-wise ~0.04% false alarm)
    assert abs(z.sum() / math.sqrt(z.size)) < 3.0
    assert np.all(np.asarray(res.stderr) > 0)


def test_hutchinson_standard_error_shrinks_as_inverse_sqrt_probes():
    """SE(n) ∝ 1/√n: the ratio SE(16)/SE(256) is 4 up to the sampling noise of two SE estimates."""
    mix, sde, x, prior = _hutchinson_case()
    kw = dict(divergence="hutchinson", probe="gaussian", rtol=1e-7, atol=1e-7, prior_log_prob=prior)
    se16 = ode_log_likelihood(mix.score_fn(sde), sde, x, n_probes=16, key=jax.random.key(2), **kw).stderr
    se256 = ode_log_likelihood(mix.score_fn(sde), sde, x, n_probes=256, key=jax.random.key(3), **kw).stderr
    ratio = float(jnp.mean(se16) / jnp.mean(se256))
    assert 3.0 < ratio < 5.3, ratio


def test_exact_divergence_on_images_shape():
    """Events of any shape: a (1, 2, 2) 'image' gives the same value as its flattened (4,) form."""
    mix = numerics.GaussianMixture([0.5, 0.5], [np.zeros(4), np.ones(4)], [np.eye(4) * 0.5, np.eye(4) * 0.2])
    sde = numerics.VPSDE()
    x = mix.sample(jax.random.key(0), 2)
    flat = ode_log_likelihood(mix.score_fn(sde), sde, x, rtol=1e-9, atol=1e-9)
    img_score = lambda z, t: mix.score_fn(sde)(z.reshape(4), t).reshape(1, 2, 2)  # noqa: E731
    img = ode_log_likelihood(img_score, sde, x.reshape(2, 1, 2, 2), rtol=1e-9, atol=1e-9)
    # the image path uses D Jacobian-vector products, the flat one the closed-form Laplacian: same value
    np.testing.assert_allclose(np.asarray(img.log_prob), np.asarray(flat.log_prob), rtol=0, atol=1e-8)
    assert img.latent.shape == (2, 1, 2, 2)


class _CountingScore(eqx.Module):
    """A score that appends to ``traces`` each time it is traced (so a retrace shows)."""

    inner: numerics.MixtureScore
    traces: list = eqx.field(static=True)

    def __call__(self, x, t):
        self.traces.append(1)  # runs only while tracing
        return self.inner(x, t)


def test_no_recompilation_for_new_mixture_of_same_shapes():
    """Passing another mixture (a PyTree score) of the same shapes must not retrace the solve."""
    traces = []
    CountingScore = functools.partial(_CountingScore, traces=traces)

    sde = numerics.VPSDE()
    a = numerics.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.eye(2), 0.5 * np.eye(2)])
    b = numerics.GaussianMixture([0.2, 0.8], [[1.0, -1.0], [0.0, 2.0]], [0.3 * np.eye(2), np.eye(2)])
    x = jnp.zeros((3, 2))
    ode_log_likelihood(CountingScore(a.score_fn(sde)), sde, x)
    n_after_first = len(traces)
    r1 = ode_log_likelihood(CountingScore(b.score_fn(sde)), sde, x)
    r2 = ode_log_likelihood(CountingScore(a.score_fn(sde)), sde, x + 0.5)
    assert len(traces) == n_after_first
    assert not np.allclose(np.asarray(r1.log_prob), np.asarray(r2.log_prob))


def test_sweep_over_sde_parameters_reuses_the_compiled_solve():
    """The SDE's schedule parameters are traced: a sweep over β_max (σ_max) must not retrace the
    solve, and each call must use ITS values: with the exact score and the exact q_T as prior the
    result is the exact log q_{t_min}(x) of that SDE."""
    traces = []
    CountingScore = functools.partial(_CountingScore, traces=traces)

    mix = numerics.GaussianMixture([0.3, 0.7], [[0.0, 1.0], [1.5, -1.0]], [0.5 * np.eye(2), np.diag([0.3, 1.2])])
    x = mix.sample(jax.random.key(3), 4)
    for make, values in ((lambda v: numerics.VPSDE(beta_max=v), (20.0, 12.0, 7.5)),
                         (lambda v: numerics.VESDE(sigma_max=v), (50.0, 20.0, 9.0))):
        counts, results = [], []
        for v in values:
            sde = make(v)
            q_T = mix.diffuse(sde, sde.T)
            r = ode_log_likelihood(CountingScore(mix.score_fn(sde)), sde, x, rtol=1e-10, atol=1e-10,
                                   prior_log_prob=q_T.log_prob)
            exact = mix.diffuse(sde, sde.t_min).log_prob(x)
            np.testing.assert_allclose(np.asarray(r.log_prob), np.asarray(exact), rtol=0, atol=1e-6)
            counts.append(len(traces))
            results.append(np.asarray(r.latent))  # x_T depends on the SDE (log q_{t_min} hardly does)
        assert counts[0] > 0 and counts == [counts[0]] * len(values), counts
        assert not np.allclose(results[0], results[-1])
    # the positive control: a new batch shape does retrace
    n = len(traces)
    ode_log_likelihood(CountingScore(mix.score_fn(sde)), sde, x[:3])
    assert len(traces) > n


def test_gradient_is_the_ode_models_score():
    """∇_x log p^ODE = ∇ log q_{t_min} for the exact score (the ODE model reproduces q; Lu et al. 2022 §3)."""
    mix, sde, x, prior = _hutchinson_case()
    f = lambda z: ode_log_likelihood(mix.score_fn(sde), sde, z[None], rtol=1e-10, atol=1e-10, prior_log_prob=prior).log_prob[0]  # noqa: E731
    np.testing.assert_allclose(np.asarray(jax.grad(f)(x[0])), np.asarray(mix.diffuse(sde, sde.t_min).score(x[0])), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("steps", ["shared", "per_sample"])
def test_step_limit_raises(steps):
    mix, sde, x, _ = _hutchinson_case()
    with pytest.raises(SolverError, match="max_steps=3"):
        ode_log_likelihood(mix.score_fn(sde), sde, x, max_steps=3, steps=steps)


def test_non_finite_score_raises():
    sde = numerics.VPSDE()
    # the same solve with a finite score succeeds within max_steps: the failure is the NaN's
    ode_log_likelihood(lambda z, t: -z, sde, jnp.ones((2, 2)), max_steps=64)
    with pytest.raises(SolverError, match="non-finite"):
        ode_log_likelihood(lambda z, t: jnp.where(t < 0.5, z, jnp.nan * z), sde, jnp.ones((2, 2)), max_steps=64)


@pytest.mark.parametrize("output", ["log_prob", "latent", "grad"])
def test_failure_inside_jit_raises(output):
    """In graph, the check is attached to the state at T: every output, and a gradient, raise."""
    mix, sde, x, _ = _hutchinson_case()

    def run(z):
        return ode_log_likelihood(mix.score_fn(sde), sde, z, max_steps=3)

    f = {"log_prob": lambda z: run(z).log_prob, "latent": lambda z: run(z).latent,
         "grad": jax.grad(lambda z: jnp.sum(run(z).log_prob))}[output]
    # a RuntimeError (equinox's runtime error; SolverError is one too) carrying SolverError's message
    with pytest.raises(RuntimeError, match="max_steps=3"):
        jax.block_until_ready(eqx.filter_jit(f)(x))
    with pytest.raises(RuntimeError, match="max_steps=3"):  # plain jax.jit too
        jax.block_until_ready(jax.jit(f)(x))


def test_inside_jit_over_the_model_with_x_closed_over():
    """jit over the mixture (the usual pattern: jit over parameters) with a concrete x captured: the
    NaN check and the solve run in graph and give the eager value."""
    mix, sde, x, _ = _hutchinson_case()
    eager = ode_log_likelihood(mix.score_fn(sde), sde, x).log_prob
    jitted = jax.jit(lambda m: ode_log_likelihood(m.score_fn(sde), sde, x).log_prob)(mix)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=0, atol=1e-12)
    with pytest.raises(Exception, match="NaN or inf"):
        bad = x.at[0, 0].set(jnp.nan)
        jax.block_until_ready(jax.jit(lambda m: ode_log_likelihood(m.score_fn(sde), sde, bad).log_prob)(mix))


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_score_of_wrong_shape_or_dtype_raises(divergence):
    mix, sde, x, _ = _hutchinson_case()
    kw = dict(divergence=divergence, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"score_fn must return .* float64\[3\]; got float64\[1\]"):
        ode_log_likelihood(lambda z, t: z[:1], sde, x, **kw)
    with pytest.raises(ValueError, match=r"score_fn must return .* got float32\[3\]"):
        ode_log_likelihood(lambda z, t: z.astype(jnp.float32), sde, x, **kw)


def test_bad_inputs_raise():
    mix, sde, x, _ = _hutchinson_case()
    score = mix.score_fn(sde)
    with pytest.raises(ValueError, match="leading batch axis"):
        ode_log_likelihood(score, sde, x[0])
    with pytest.raises(ValueError, match="NaN or inf in 1 of 6"):
        ode_log_likelihood(score, sde, x.at[2, 1].set(jnp.nan))
    with pytest.raises(ValueError, match="key is required"):
        ode_log_likelihood(score, sde, x, divergence="hutchinson")
    with pytest.raises((ValueError, TypeError), match="divergence"):
        ode_log_likelihood(score, sde, x, divergence="trace")
    with pytest.raises(ValueError, match="n_probes"):
        ode_log_likelihood(score, sde, x, divergence="hutchinson", n_probes=0, key=jax.random.key(0))
    with pytest.raises(ValueError, match="t_start"):
        ode_log_likelihood(score, sde, x, t_start=1.0)
    with pytest.raises((ValueError, TypeError), match="steps"):
        ode_log_likelihood(score, sde, x, steps="flattened")
    for kw, message in [(dict(max_steps=0), "max_steps must be an integer >= 1"),
                        (dict(rtol=math.inf), "rtol and atol must be positive and finite")]:
        with pytest.raises(ValueError, match=message):
            ode_log_likelihood(score, sde, x, **kw)
    with pytest.raises(ValueError, match="empty batch"):
        ode_log_likelihood(score, sde, x[:0])


@pytest.mark.parametrize("solver", ["Tsit5", "Heun", "Bosh3"])
def test_nfe_counts_the_score_evaluations(solver):
    """The reported NFE equals the number of score evaluations counted by a host callback (an
    independent count): first-same-as-last tableaus (Tsit5, Bosh3) add one at the start, Heun none."""
    from jax.experimental import io_callback

    calls = [0]

    def bump(t):
        calls[0] += 1
        return np.zeros((), np.float64)

    mix, sde, x, _ = _hutchinson_case()
    exact = mix.score_fn(sde)

    def counted(z, t):
        return exact(z, t) + io_callback(bump, jax.ShapeDtypeStruct((), jnp.float64), t, ordered=True)

    res = ode_log_likelihood(counted, sde, x[:1], rtol=1e-4, atol=1e-4, solver=getattr(diffrax, solver)())
    assert int(res.nfe[0]) == calls[0] > 10


def test_bits_per_dim_uniform_is_8():
    """The uniform density on [−1, 1]^D gives exactly 8 bits/dim (THEORY.md §8.24)."""
    D = 3072
    assert float(bits_per_dim(-D * math.log(2.0), D, data_scale=2.0)) == pytest.approx(8.0, abs=1e-12)
    assert float(bits_per_dim(0.0, D, data_scale=1.0)) == pytest.approx(8.0, abs=1e-12)


def test_bits_per_dim_is_exact_for_histogram_densities():
    """A density constant on each dequantisation cube has P(k) = p_X · a / 256: the bound is tight, −log₂ P(k)."""
    rng = np.random.default_rng(0)
    P = rng.dirichlet(np.ones(256))
    a = 2.0
    k = rng.integers(0, 256, 50)
    log_px = np.log(P[k] * 256 / a)  # p_Y = 256 P(k) on the cube of side 1/256; p_X = p_Y / a
    np.testing.assert_allclose(np.asarray(bits_per_dim(jnp.asarray(log_px), 1, data_scale=a)), -np.log2(P[k]), rtol=1e-12)
    with pytest.raises(ValueError, match="dims"):
        bits_per_dim(0.0, 0, data_scale=2.0)
    with pytest.raises(ValueError, match="n_bins must be an integer >= 2"):
        bits_per_dim(0.0, 3, data_scale=2.0, n_bins=1)


def test_eager_gradient_with_respect_to_the_model_equals_the_jitted_one():
    """grad of the likelihood w.r.t. the mixture's means without jit (the arguments are tracers, x is
    concrete): the eager one-kernel form must not be used (it has no reverse-mode derivative). With
    the exact score and the exact q_T of every mixture, log p^ODE = log q_{t_min} for all means, so
    the gradient is that of the exact mixture density; and it equals the one computed under jit."""
    mix, sde, x, _ = _hutchinson_case()

    def nll(means, exact=False):
        m = numerics.GaussianMixture(mix.weights, means, mix.covariances)
        if exact:
            return -jnp.sum(m.diffuse(sde, sde.t_min).log_prob(x[:3]))
        res = ode_log_likelihood(m.score_fn(sde), sde, x[:3], rtol=1e-8, atol=1e-8,
                                 prior_log_prob=m.diffuse(sde, sde.T).log_prob)
        return -jnp.sum(res.log_prob)

    eager = np.asarray(jax.grad(nll)(mix.means))
    np.testing.assert_allclose(eager, np.asarray(jax.grad(nll)(mix.means, exact=True)), rtol=1e-6, atol=1e-6)  # measured 3e-8
    np.testing.assert_allclose(eager, np.asarray(jax.jit(jax.grad(nll))(mix.means)), rtol=1e-9, atol=1e-9)
