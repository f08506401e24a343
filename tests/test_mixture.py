"""numerics.mixture against independent computations: scipy densities, finite differences, closed forms."""

import re

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import special, stats

import numerics
from numerics import strategies as nst


def _scipy_log_prob(weights, means, covs, x):
    """log Σ π_k N(x; μ_k, C_k) with scipy (Cholesky inside scipy), independent of the eigenbasis code."""
    comps = np.stack([stats.multivariate_normal(means[k], covs[k]).logpdf(x) for k in range(len(weights))], -1)
    return special.logsumexp(comps + np.log(weights), axis=-1)


def _points(mixture, seed, n=6):
    rng = np.random.default_rng(seed)
    return np.asarray(mixture.sample(jax.random.key(seed), n)) + 0.5 * rng.normal(size=(n, mixture.dim))


@given(nst.mixture_params(max_dim=4, max_components=4), nst.sdes(kinds=nst.SDE_KINDS), st.floats(0.0, 1.0))
def test_diffused_log_prob_matches_scipy(params, sde, u):
    """q_t = Σ π_k N(α_t μ_k, α_t² Σ_k + σ_t² I) (THEORY.md §6.3), against scipy on the same parameters."""
    w, mu, cov = params
    t = u * sde.T
    a, v = float(sde.mean_coeff(t)), float(sde.variance(t))
    mix = numerics.GaussianMixture(w, mu, cov)
    x = _points(mix.diffuse(sde, t), 1)
    expected = _scipy_log_prob(w, a * mu, a * a * cov + v * np.eye(mix.dim), x)
    np.testing.assert_allclose(np.asarray(mix.diffuse(sde, t).log_prob(x)), expected, rtol=1e-10, atol=1e-10)


def _fd_grad(f, x, h):
    """Fourth-order central differences of a scalar- or vector-valued f at one point x (D,)."""
    cols = []
    for i in range(x.shape[0]):
        e = np.zeros_like(x)
        e[i] = h
        cols.append((-f(x + 2 * e) + 8 * f(x + e) - 8 * f(x - e) + f(x - 2 * e)) / (12 * h))
    return np.stack(cols, axis=-1)


@given(nst.mixtures(max_dim=4, max_components=4), nst.sdes(), st.floats(0.0, 1.0), st.integers(0, 100))
def test_derivatives_match_finite_differences(mixture, sde, u, seed):
    """Score, Hessian and ∇Δ log q (Lu et al. 2022's third-order object) against finite differences."""
    q = mixture.diffuse(sde, u * sde.T)
    x = _points(q, seed, n=2)
    scale = float(jnp.sqrt(jnp.min(q.eigvals)))
    h = 1e-3 * scale
    lp = lambda z: np.asarray(q.log_prob(jnp.asarray(z)))  # noqa: E731
    for xi in x:
        s = np.asarray(q.score(xi))
        H = np.asarray(q.hessian(xi))
        gl = np.asarray(q.grad_laplacian(xi))
        s_fd = _fd_grad(lp, xi, h)
        H_fd = _fd_grad(lambda z: np.asarray(q.score(jnp.asarray(z))), xi, h)
        gl_fd = _fd_grad(lambda z: np.trace(np.asarray(q.hessian(jnp.asarray(z)))), xi, h)
        tol = lambda ref: 1e-6 * (1.0 + np.max(np.abs(ref)))  # noqa: E731
        np.testing.assert_allclose(s, s_fd, atol=tol(s_fd))
        np.testing.assert_allclose(H, H_fd, atol=tol(H_fd))
        np.testing.assert_allclose(H, H.T, atol=1e-12 * (1 + np.max(np.abs(H))))
        np.testing.assert_allclose(float(q.laplacian(xi)), np.trace(H_fd), atol=tol(H_fd))
        np.testing.assert_allclose(gl, gl_fd, atol=1e-5 * (1.0 + np.max(np.abs(gl_fd))))


@eqx.filter_jit
def _batch_field(score_fn, x, t):
    return score_fn.score_and_divergence_batch(x, t)


@eqx.filter_jit
def _per_sample_field(score_fn, x, t):
    return jax.vmap(score_fn.score_and_divergence, (0, None))(x, t)


@pytest.mark.parametrize("dims", [(1, 8), (9, 12)], ids=["unrolled", "vmapped"])
@given(data=st.data(), sde=nst.sdes(), u=st.floats(0.0, 1.0), seed=st.integers(0, 100))
def test_batched_score_and_divergence_matches_per_sample(dims, data, sde, u, seed):
    """The batch layout used by the likelihood (unrolled up to D = 8, the per-sample form vmapped above) against the
    per-sample formulas, and the Laplacian against the trace of the Hessian."""
    mixture = data.draw(nst.mixtures(min_dim=dims[0], max_dim=dims[1], max_components=4))
    t = u * sde.T
    score_fn = mixture.score_fn(sde)
    x = _points(mixture.diffuse(sde, t), seed, n=5)
    # jitted: eagerly, the unrolled layout dispatches hundreds of tiny operations (2.5 s per example)
    s_b, lap_b = _batch_field(score_fn, jnp.asarray(x), t)
    s_1, lap_1 = _per_sample_field(score_fn, jnp.asarray(x), t)
    hess = mixture.diffuse(sde, t).hessian(x)
    scale = 1.0 + float(jnp.max(jnp.abs(s_1)))
    np.testing.assert_allclose(np.asarray(s_b), np.asarray(s_1), atol=1e-10 * scale)
    np.testing.assert_allclose(np.asarray(lap_b), np.asarray(lap_1), atol=1e-9 * (1.0 + float(jnp.max(jnp.abs(lap_1)))))
    np.testing.assert_allclose(np.asarray(lap_b), np.trace(np.asarray(hess), axis1=-2, axis2=-1),
                               atol=1e-9 * (1.0 + float(jnp.max(jnp.abs(lap_1)))))


@given(nst.mixture_params(max_dim=4, max_components=1, min_components=1), nst.sdes(), st.floats(0.0, 1.0))
def test_single_gaussian_closed_forms(params, sde, u):
    """K = 1 (THEORY.md §6.1): score −C⁻¹(x − m), Hessian −C⁻¹, ∇Δ log q = 0, posterior N(μ + αΣC⁻¹(x − m), Σ − α²ΣC⁻¹Σ)."""
    w, mu, cov = params
    t = max(u, 1e-3) * sde.T
    a, v = float(sde.mean_coeff(t)), float(sde.variance(t))
    mix = numerics.GaussianMixture(w, mu, cov)
    C = a * a * cov[0] + v * np.eye(mix.dim)
    P = np.linalg.inv(C)
    x = _points(mix.diffuse(sde, t), 3, n=3)
    np.testing.assert_allclose(mix.diffuse(sde, t).score(x), -(x - a * mu[0]) @ P.T, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mix.diffuse(sde, t).hessian(x), np.broadcast_to(-P, (3, *P.shape)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(mix.diffuse(sde, t).grad_laplacian(x), 0.0, atol=1e-9 * np.max(np.abs(P)) ** 2)
    weights, means, covs = mix.posterior(sde, t, x)
    S = cov[0]
    np.testing.assert_allclose(weights, 1.0)
    np.testing.assert_allclose(means[:, 0], mu[0] + (x - a * mu[0]) @ (a * S @ P).T, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(covs[0], S - a * a * S @ P @ S, rtol=1e-7, atol=1e-9)


@given(nst.mixtures(max_dim=3, max_components=3), nst.sdes(), st.floats(0.05, 1.0))
def test_posterior_mean_is_tweedie(mixture, sde, u):
    """Σ_k w_k m_k (exact posterior, THEORY.md §6.3) = (x + σ² ∇log q_t)/α (Tweedie)."""
    t = u * sde.T
    x = _points(mixture.diffuse(sde, t), 5, n=4)
    w, m, _ = mixture.posterior(sde, t, x)
    np.testing.assert_allclose(np.einsum("bk,bkd->bd", w, m), mixture.denoiser(sde, t, x), rtol=1e-8, atol=1e-8)


def test_sample_moments():
    """Sample mean and covariance agree with the mixture's moments within 4 standard errors."""
    w = np.array([0.2, 0.5, 0.3])
    mu = np.array([[0.0, 1.0], [2.0, -1.0], [-1.5, 0.5]])
    cov = np.array([np.eye(2) * 0.5, [[1.0, 0.6], [0.6, 0.8]], [[0.3, -0.1], [-0.1, 0.2]]])
    mix = numerics.GaussianMixture(w, mu, cov)
    n = 200_000
    x = np.asarray(mix.sample(jax.random.key(3), n))
    mean = w @ mu
    second = np.einsum("k,kij->ij", w, cov + np.einsum("ki,kj->kij", mu, mu))
    full_cov = second - np.outer(mean, mean)
    se = np.sqrt(np.diag(full_cov) / n)
    assert np.all(np.abs(x.mean(0) - mean) < 4 * se)
    np.testing.assert_allclose(np.cov(x.T), full_cov, atol=0.02)


def test_component_and_diagonal_constructors():
    mix = numerics.GaussianMixture.from_diagonal([0.4, 0.6], [-1.0, 2.0], [0.5, 0.25])
    assert mix.dim == 1 and mix.n_components == 2
    x = np.array([[0.3], [1.9]])
    expected = special.logsumexp(
        np.stack([np.log(0.4) + stats.norm(-1, np.sqrt(0.5)).logpdf(x[:, 0]), np.log(0.6) + stats.norm(2, 0.5).logpdf(x[:, 0])]),
        axis=0,
    )
    np.testing.assert_allclose(mix.log_prob(x), expected, rtol=1e-12)
    np.testing.assert_allclose(mix.covariances[:, 0, 0], [0.5, 0.25], rtol=1e-12)


def test_jit_and_vmap_friendly():
    mix = numerics.GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], [np.eye(2), 2 * np.eye(2)])
    sde = numerics.VPSDE()
    f = jax.jit(lambda m, t, x: m.diffuse(sde, t).score(x))
    x = jnp.ones((3, 2))
    np.testing.assert_allclose(f(mix, 0.3, x), mix.diffuse(sde, 0.3).score(x), rtol=1e-12)
    ts = jnp.array([0.1, 0.5, 0.9])
    batched = jax.vmap(lambda t, xi: mix.score_fn(sde)(xi, t))(ts, x)
    np.testing.assert_allclose(batched[1], mix.diffuse(sde, 0.5).score(x[1]), rtol=1e-12)
    assert mix.log_prob(x).dtype == jnp.float64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=[0.5, 0.6]), "weights must sum to 1"),
        (dict(weights=[1.2, -0.2]), "weights must be non-negative"),
        (dict(weights=[0.5, np.nan]), "weights contains NaN"),
        (dict(means=[[0.0, 0.0]]), r"means must have shape \(K, D\)"),
        (dict(means=np.zeros((2, 0)), covariances=np.zeros((2, 0, 0))), r"means must have shape .* with D >= 1"),
        (dict(means=[[0.0, np.inf], [1.0, 1.0]]), "means contains NaN"),
        (dict(covariances=np.stack([np.eye(2), [[1.0, 0.5], [0.0, 1.0]]])), r"covariances\[1\] is not symmetric"),
        (dict(covariances=np.stack([np.eye(2), [[1.0, 2.0], [2.0, 1.0]]])), r"covariances\[1\] is not positive definite"),
        (dict(covariances=np.eye(2)[None]), r"covariances must have shape \(K, D, D\)"),
    ],
)
def test_bad_parameters_raise(kwargs, match):
    args = dict(weights=[0.5, 0.5], means=[[0.0, 0.0], [1.0, 1.0]], covariances=np.stack([np.eye(2)] * 2))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        numerics.GaussianMixture(**args)


def test_diffuse_outside_time_range_raises():
    mix = numerics.GaussianMixture([1.0], [[0.0]], [[[1.0]]])
    with pytest.raises(ValueError, match="t must lie in"):
        mix.diffuse(numerics.VPSDE(), -0.1)



def _two_d_mixture():
    return numerics.GaussianMixture([0.4, 0.6], [[0.0, 0.0], [1.0, -1.0]], [np.eye(2), [[1.0, 0.3], [0.3, 0.5]]])


@pytest.mark.parametrize("method", ["log_prob", "responsibilities", "score", "hessian", "laplacian", "grad_laplacian"])
@pytest.mark.parametrize("shape", [(3, 1), (3,), (2, 3, 1)])
def test_points_of_wrong_dimension_raise(method, shape):
    """A last axis other than D broadcast silently (log_prob(zeros((3, 1))) returned numbers); now a ValueError
    naming x, raised while tracing (also under jax.jit, where x has no value); the right shape still works."""
    mix = _two_d_mixture()
    msg = rf"x must have last axis of size D=2 \(the mixture's dimension\); got shape {re.escape(str(shape))}"
    with pytest.raises(ValueError, match=msg):
        getattr(mix, method)(np.zeros(shape))
    with pytest.raises(ValueError, match=msg):
        jax.jit(lambda m, z: getattr(m, method)(z))(mix, jnp.zeros(shape))
    good = getattr(mix, method)(np.zeros((3, 2)))
    assert good.shape[0] == 3 and bool(jnp.all(jnp.isfinite(good)))
    np.testing.assert_allclose(mix.log_prob(np.zeros((3, 2))), _scipy_log_prob(
        np.asarray(mix.weights), np.asarray(mix.means), np.asarray(mix.covariances), np.zeros((3, 2))), rtol=1e-12)


def test_points_of_wrong_dimension_raise_in_posterior_and_denoiser():
    mix, sde = _two_d_mixture(), numerics.VPSDE()
    for fn in (mix.posterior, mix.denoiser):
        with pytest.raises(ValueError, match=r"x_t must have last axis of size D=2 .*got shape \(3, 1\)"):
            fn(sde, 0.5, np.zeros((3, 1)))
    # a scalar point: the tests' jaxtyping hook rejects it first (TypeCheckError); without it, the ValueError
    with pytest.raises((ValueError, TypeError)):
        mix.log_prob(np.zeros(()))
    with pytest.raises(ValueError, match=r"x must have last axis of size D=2 .*got shape \(\)"):
        numerics.mixture._check_points(np.zeros(()), 2)


def test_the_score_function_checks_its_points_and_the_posterior_its_time(without_jaxtyping):
    """MixtureScore (the mixture's score as a model) read a wrong last axis with JAX's clamped indexing
    (a (4, 1) or (4, 3) batch gave (4, 2) scores) or broadcast it; now a ValueError naming x and D. The
    posterior (and s2_star, s3_star through it) at σ_t = 0 returned NaN; now a ValueError naming t.
    sample takes a NumPy integer (it was traced by the jit and refused)."""
    from numerics.high_order import s2_star

    mix, sde = _two_d_mixture(), numerics.VPSDE()
    ms = mix.score_fn(sde)
    for fn, shape in ((ms.score_and_divergence_batch, (4, 1)), (ms.score_and_divergence_batch, (4, 3)), (ms, (1,)),
                      (ms.score_and_divergence, (3,))):
        with pytest.raises(ValueError, match=rf"x must have last axis of size D=2 .*got shape {re.escape(str(shape))}"):
            fn(jnp.ones(shape), 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \(N, D\) with D=2; got shape \(2,\)"):
        ms.score_and_divergence_batch(jnp.ones(2), 0.5)
    x = jnp.array([[0.2, -0.3], [1.0, 0.5]])
    np.testing.assert_allclose(ms.score_and_divergence_batch(x, 0.5)[0], mix.diffuse(sde, 0.5).score(x), rtol=1e-12)
    for fn in (lambda: mix.posterior(sde, 0.0, x[0]), lambda: s2_star(mix, sde, 0.0, x[0], x[1])):
        with pytest.raises(ValueError, match=r"t=0: the posterior of x_0 given x_t needs σ_t > 0"):
            fn()
    assert bool(jnp.all(jnp.isfinite(s2_star(mix, sde, sde.t_min, x[0], x[1]))))
    assert mix.sample(jax.random.key(0), np.int64(5)).shape == (5, 2)
    np.testing.assert_array_equal(mix.sample(jax.random.key(0), np.int64(5)), mix.sample(jax.random.key(0), 5))


def test_non_scalar_time_raises():
    """t = [0.1, 0.9] on a 2-D mixture used one time per dimension; now a ValueError that suggests jax.vmap,
    and the suggested vmap agrees with scalar calls."""
    mix, sde = _two_d_mixture(), numerics.VPSDE()
    ts = jnp.array([0.1, 0.9])
    x = np.array([[0.2, -0.3], [1.0, 0.5], [-1.0, 2.0]])
    msg = r"t must be a scalar time \(ndim 0\); got shape \(2,\).*loop over them or use jax\.vmap over t"
    for fn in (mix.posterior, mix.denoiser):
        with pytest.raises(ValueError, match=msg):
            fn(sde, ts, x)
    with pytest.raises((ValueError, TypeError)):  # diffuse's t is annotated scalar: TypeCheckError under the hook
        mix.diffuse(sde, ts)
    with pytest.raises(ValueError, match=msg):
        numerics.mixture._check_scalar_time(ts)
    lp = jax.vmap(lambda s: mix.diffuse(sde, s).log_prob(x[0]))(ts)
    np.testing.assert_allclose(lp, [float(mix.diffuse(sde, 0.1).log_prob(x[0])), float(mix.diffuse(sde, 0.9).log_prob(x[0]))],
                               rtol=1e-12)
    np.testing.assert_allclose(mix.denoiser(sde, jnp.asarray(0.5), x), mix.denoiser(sde, 0.5, x), rtol=1e-14)


def test_float32_rotated_covariance_is_accepted():
    """R Λ Rᵀ rounded in float32 is asymmetric by 7.5e-9 (rejected by the old fixed 1e-9 · max|Σ|); accepted now,
    with log q equal to the float64 mixture's to float32 precision. Genuinely asymmetric matrices still raise."""
    q, _ = np.linalg.qr(np.random.default_rng(7).normal(size=(3, 3)))
    lam = np.array([0.37, 1.3, 2.9])
    cov32 = (q.astype(np.float32) * lam.astype(np.float32)) @ q.astype(np.float32).T
    asym = float(np.max(np.abs(cov32 - cov32.T)))
    assert 1e-9 * float(np.max(np.abs(cov32))) < asym < 1e-7  # float32 roundoff, above the old tolerance
    cov64 = (q * lam) @ q.T
    cov64 = 0.5 * (cov64 + cov64.T)
    w, mu = np.array([0.3, 0.7]), np.array([[0.5, -0.2, 0.1], [-1.0, 1.0, 0.0]])
    x = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [-1.5, 0.5, 1.0]])
    mix32 = numerics.GaussianMixture(w.astype(np.float32), mu.astype(np.float32),
                                     np.stack([cov32, np.eye(3, dtype=np.float32)]))
    mix64 = numerics.GaussianMixture(w, mu, np.stack([cov64, np.eye(3)]))
    assert mix32.eigvals.dtype == jnp.float64
    np.testing.assert_allclose(mix32.log_prob(x), mix64.log_prob(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(mix64.log_prob(x), _scipy_log_prob(w, mu, np.stack([cov64, np.eye(3)]), x), rtol=1e-12)
    bad32 = np.stack([np.eye(3), [[1.0, 0.5, 0.0], [0.49, 1.0, 0.0], [0.0, 0.0, 1.0]]]).astype(np.float32)
    with pytest.raises(ValueError, match=r"covariances\[1\] is not symmetric .*float32 input\); pass \(C \+ C.T\) / 2"):
        numerics.GaussianMixture(w, mu, bad32)
    bad64 = np.stack([np.eye(3), cov64 + np.diag([1e-7, 0.0], 1)])  # 1e-7 relative is not float64 roundoff
    with pytest.raises(ValueError, match=r"covariances\[1\] is not symmetric"):
        numerics.GaussianMixture(w, mu, bad64)


def test_weights_within_tolerance_are_renormalised():
    """Weights summing to 1 ± 5e-7 are accepted and stored as w / Σ w: log q equals the exactly normalised
    mixture's to 1e-12 (it was off by log(1 ± 5e-7) ≈ ±5e-7 nats); sums clearly off 1 still raise."""
    w = np.array([0.25, 0.35, 0.4])
    mu = np.array([[0.0], [1.5], [-2.0]])
    cov = np.array([[[1.0]], [[0.3]], [[2.0]]])
    x = np.linspace(-4.0, 4.0, 9)[:, None]
    exact = numerics.GaussianMixture(w, mu, cov)
    np.testing.assert_allclose(exact.log_prob(x), _scipy_log_prob(w, mu, cov, x), rtol=1e-12)
    for factor in (1 + 5e-7, 1 - 5e-7):
        mix = numerics.GaussianMixture(w * factor, mu, cov)
        np.testing.assert_allclose(mix.log_prob(x), exact.log_prob(x), rtol=0, atol=1e-12)
        np.testing.assert_allclose(mix.weights, w, rtol=1e-14)
    with pytest.raises(ValueError, match="weights must sum to 1"):
        numerics.GaussianMixture(w * (1 + 1e-5), mu, cov)
