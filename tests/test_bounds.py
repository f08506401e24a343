"""numerics.bounds: the pieces of Song et al.'s ε-offset bound against independent computations."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from numerics.bounds import eps_offset_bound, neg_prior_expectation, prior_cross_entropy
from numerics.losses import dsm_loss


def test_neg_prior_expectation_matches_monte_carlo():
    """−E[log π(α_T x + σ_T ε)] in closed form vs Monte Carlo over ε (3 SE), VP and VE priors."""
    x = jnp.array([[0.3, -1.2, 2.0], [1.5, 0.0, -0.7]])
    for sde in (numerics.VPSDE(), numerics.VESDE(sigma_max=20.0)):
        eps = jax.random.normal(jax.random.key(0), (100_000, 3))
        T = jnp.asarray(sde.T)
        exact = neg_prior_expectation(sde, x)
        for i in range(2):
            vals = -jax.vmap(sde.prior_log_prob)(sde.mean_coeff(T) * x[i] + sde.std(T) * eps)
            se = float(jnp.std(vals) / jnp.sqrt(vals.size))
            assert abs(float(jnp.mean(vals)) - float(exact[i])) < 3 * se + 1e-12


def test_eps_offset_bound_is_nearly_tight_for_gaussian_data():
    """Gaussian data, exact score: E_x[bound] ≥ H(q_0) and within 0.05 nats of it (THEORY.md §2.7, §4.5)."""
    mix = numerics.GaussianMixture([1.0], [[0.7, -0.3]], [np.diag([0.16, 0.5])])
    sde = numerics.VPSDE(t_min=1e-3)
    n = 200_000
    k_x, k_d, k_0 = jax.random.split(jax.random.key(1), 3)
    x0 = mix.sample(k_x, n)
    score = mix.score_fn(sde)
    diffusion = dsm_loss(score, sde, x0, k_d, weighting="g2_is")
    terms = eps_offset_bound(score, sde, x0, diffusion, jax.random.normal(k_0, x0.shape))
    entropy = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * np.diag([0.16, 0.5])))
    mean, se = float(terms.total.mean()), float(terms.total.std() / np.sqrt(n))
    assert mean > entropy - 3 * se
    assert mean - entropy < 0.05 + 3 * se


def test_neg_prior_expectation_with_conditional_coefficients_matches_monte_carlo():
    """(a_T, b_T²) of X_T | X_ε = x (a = α_T/α_ε, b² = σ_T² − a²σ_ε²): −E[log π(a x + b ε)] in closed form
    vs Monte Carlo over ε (3 SE), VP and VE; the default coefficients are (α_T, σ_T²)."""
    x = jnp.array([[0.3, -1.2, 2.0], [1.5, 0.0, -0.7]])
    eps = jax.random.normal(jax.random.key(3), (100_000, 3))
    for sde in (numerics.VPSDE(t_min=0.1), numerics.VESDE(sigma_max=20.0, t_min=0.1)):
        T, te = jnp.asarray(sde.T), jnp.asarray(sde.t_min)
        a = sde.mean_coeff(T) / sde.mean_coeff(te)
        b2 = sde.variance(T) - a**2 * sde.variance(te)
        exact = neg_prior_expectation(sde, x, coeffs=(a, b2))
        for i in range(2):
            vals = -jax.vmap(sde.prior_log_prob)(a * x[i] + jnp.sqrt(b2) * eps)
            se = float(jnp.std(vals) / jnp.sqrt(vals.size))
            assert abs(float(jnp.mean(vals)) - float(exact[i])) < 3 * se + 1e-12
        np.testing.assert_allclose(neg_prior_expectation(sde, x),
                                   neg_prior_expectation(sde, x, coeffs=(sde.mean_coeff(T), sde.variance(T))),
                                   rtol=1e-14)


def test_prior_cross_entropy_at_mean_square_norm_is_the_mean_over_x():
    """The prior term is affine in ‖x‖²: at E‖x‖² = tr Σ + ‖μ‖² it is E_x over x ~ N(μ, Σ) (MC over x and ε)."""
    sde = numerics.VPSDE(beta_max=5.0)  # α_T not negligible: the ‖x‖² term matters
    mu, var = jnp.array([0.7, -0.3]), jnp.array([0.16, 0.5])
    k_x, k_e = jax.random.split(jax.random.key(4))
    n = 200_000
    xs = mu + jnp.sqrt(var) * jax.random.normal(k_x, (n, 2))
    T = jnp.asarray(sde.T)
    x_T = sde.mean_coeff(T) * xs + sde.std(T) * jax.random.normal(k_e, (n, 2))
    vals = -jax.vmap(sde.prior_log_prob)(x_T)
    exact = float(prior_cross_entropy(sde, float(jnp.sum(var) + mu @ mu), 2))
    assert abs(float(vals.mean()) - exact) < 3 * float(vals.std() / np.sqrt(n))


def test_prior_terms_trace_with_traced_sde_parameters():
    """Under jit with the VE SDE (prior_std a traced parameter) and traced coefficients: same values."""
    sde = numerics.VESDE(sigma_max=20.0)
    x = jnp.array([[0.3, -1.2], [1.5, 0.0]])
    f = eqx.filter_jit(lambda s, x, a, b2: neg_prior_expectation(s, x, coeffs=(a, b2)))
    traced = f(sde, x, jnp.asarray(1.0), jnp.asarray(400.0))
    np.testing.assert_allclose(traced, neg_prior_expectation(sde, x, coeffs=(1.0, 400.0)), rtol=1e-14)


def test_bad_prior_coefficients_raise():
    sde = numerics.VPSDE()
    with pytest.raises(ValueError, match="coeffs"):
        neg_prior_expectation(sde, jnp.ones((2, 3)), coeffs=(1.0, 0.5, 0.1))
    with pytest.raises(ValueError, match="dim"):
        prior_cross_entropy(sde, 1.0, 0)


def test_eps_offset_bound_rejects_per_example_arguments_of_the_wrong_shape(without_jaxtyping):
    """A (N, 1) diffusion term used to broadcast the total to (N, N); eps_0 must have x0's shape."""
    mix = numerics.GaussianMixture([1.0], [[0.7, -0.3]], [np.diag([0.16, 0.5])])
    sde = numerics.VPSDE(t_min=1e-3)
    x0 = mix.sample(jax.random.key(0), 5)
    score, eps_0, diffusion = mix.score_fn(sde), jnp.zeros_like(x0), jnp.ones(5)
    assert eps_offset_bound(score, sde, x0, diffusion, eps_0).total.shape == (5,)
    for bad in (diffusion[:, None], diffusion[:4], jnp.asarray(1.0)):
        with pytest.raises(ValueError, match="diffusion"):
            eps_offset_bound(score, sde, x0, bad, eps_0)
    for bad in (eps_0[:4], eps_0[:, :1], eps_0.reshape(-1)):
        with pytest.raises(ValueError, match="eps_0"):
            eps_offset_bound(score, sde, x0, diffusion, bad)
    with pytest.raises(ValueError, match="diffusion"):  # the check is on static shapes: it also fires under jit
        eqx.filter_jit(eps_offset_bound)(score, sde, x0, diffusion[:, None], eps_0)
