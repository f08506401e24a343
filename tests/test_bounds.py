"""numerics.bounds: the pieces of Song et al.'s ε-offset bound against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np

import numerics
from numerics.bounds import eps_offset_bound, neg_prior_expectation
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
    np.testing.assert_allclose(
        terms.total, terms.prior + terms.diffusion - terms.constant + terms.decoder - terms.entropy, rtol=1e-12
    )
    entropy = 0.5 * np.log(np.linalg.det(2 * np.pi * np.e * np.diag([0.16, 0.5])))
    mean, se = float(terms.total.mean()), float(terms.total.std() / np.sqrt(n))
    assert mean > entropy - 3 * se
    assert mean - entropy < 0.05 + 3 * se
