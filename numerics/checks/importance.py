"""Importance sampling of t for the likelihood-weighted DSM estimator (Song et al. 2021 §5;
THEORY.md §2.6, STACK_NOTES pitfall 7).

Uniform t ~ U[ε, T] (weighting "g2") versus t ~ p(t) ∝ g²/σ² (weighting "g2_is", log-SNR uniform,
exact inverse CDF from :meth:`numerics.sde.SDE.importance_sample_t`): both single-sample estimators
from :func:`numerics.losses.dsm_loss` have expectation J_DSM(θ; g²) over [ε, T]. The check is the
equality of the means (independent samples, SE = √(se₁² + se₂²)), and of the IS mean with the log-SNR
quadrature value (per-path, engine; a low-variance third estimate); the variances and their ratio are
reported (smaller variance under IS is Song's motivation, not a theorem).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from numerics.checks import engine
from numerics.checks.engine import CheckResult
from numerics.checks.song2021 import check_dsm_constant
from numerics.losses import dsm_loss
from numerics.mixture import GaussianMixture
from numerics.sde import SDE

__all__ = ["check_importance_sampling"]


def check_importance_sampling(q: GaussianMixture, model, sde: SDE, *, seed: int = 0, n_samples: int = 20000,
                              n_quad_samples: int = 512) -> list[CheckResult]:
    """E[uniform-t estimator] = E[IS estimator] = J_DSM(θ; g²) (Song+21 §5, THEORY.md §2.6).

    Two identities: the means of the uniform-t and IS estimators (independent samples), and the IS mean
    against the log-SNR quadrature value of J_DSM (:func:`numerics.checks.song2021.check_dsm_constant`,
    independent paths). The second has the smaller SE (the uniform-t estimator's variance is several
    times IS's), so it is the sharper test of the IS density p(t) and its normalisation."""
    engine.check_n_samples(n_samples)
    engine.check_n_samples(n_quad_samples, "n_quad_samples")
    key = engine.key_from_seed(seed)
    k0, k1, k2, k3 = jax.random.split(key, 4)
    x_a = q.sample(k0, n_samples)
    x_b = q.sample(k1, n_samples)
    uni = dsm_loss(model, sde, x_a, k2, weighting="g2")
    imp = dsm_loss(model, sde, x_b, k3, weighting="g2_is")
    mu, se_u = engine.mc_mean(uni)
    mi, se_i = engine.mc_mean(imp)
    var_u, var_i = float(jnp.var(uni)), float(jnp.var(imp))
    res_q, _, _ = check_dsm_constant(q, model, sde, seed=seed + 1, n_samples=n_quad_samples)
    j_q, se_q = res_q.settings["J_DSM_model"], res_q.settings["J_DSM_model_se"]
    st = dict(sde=type(sde).__name__, D=q.dim, n_samples=n_samples, var_uniform=var_u, var_is=var_i,
              variance_ratio=var_u / var_i, se_uniform=se_u, se_is=se_i, J_DSM_quadrature=j_q,
              J_DSM_quadrature_se=se_q, n_quad_samples=n_quad_samples)
    return [
        engine.identity("is_same_mean", "Song+21", "E_U[t](g2 DSM) = E_p_IS(g2 DSM) = J_DSM(g^2)", mu, mi,
                        math.hypot(se_u, se_i), settings=st),
        engine.identity("is_matches_quadrature", "Song+21", "E_p_IS(g2 DSM) = J_DSM(g^2) by log-SNR quadrature", mi,
                        j_q, math.hypot(se_i, se_q), settings=st),
    ]
