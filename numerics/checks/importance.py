"""Importance sampling of t for the likelihood-weighted DSM estimator (Song et al. 2021 §5;
THEORY.md §2.6, STACK_NOTES pitfall 7).

Uniform t ~ U[ε, T] (weighting "g2") versus t ~ p(t) ∝ g²/σ² (weighting "g2_is", log-SNR uniform,
exact inverse CDF from :meth:`numerics.sde.SDE.importance_sample_t`): both single-sample estimators
from :func:`numerics.losses.dsm_loss` have expectation J_DSM(θ; g²) over [ε, T]. The check is the
equality of the means (independent samples, SE = √(se₁² + se₂²)), and of the IS mean with the log-SNR
quadrature value (:func:`estimator_moments`: per-path, engine; a low-variance third estimate); the
variances and their ratio are reported, by sample and by quadrature (smaller variance under IS is Song's
motivation, not a theorem).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from numerics.checks import engine
from numerics.checks.engine import CheckResult
from numerics.losses import dsm_loss, dsm_loss_terms
from numerics.mixture import GaussianMixture
from numerics.sde import SDE

__all__ = ["check_importance_sampling", "estimator_moments"]


def check_importance_sampling(q: GaussianMixture, model, sde: SDE, *, seed: int = 0, n_samples: int = 20000,
                              n_quad_samples: int = 512) -> list[CheckResult]:
    """E[uniform-t estimator] = E[IS estimator] = J_DSM(θ; g²) (Song+21 §5, THEORY.md §2.6).

    Two identities: the means of the uniform-t and IS estimators (independent samples), and the IS mean
    against the log-SNR quadrature value of J_DSM (:func:`estimator_moments`, independent paths; it also
    gives the variance ratio without the uniform-t draws' heavy tail). The second has the smaller SE (the uniform-t estimator's variance is several
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
    quad = estimator_moments(q, model, sde, seed=seed + 1, n_samples=n_quad_samples)
    j_q, se_q = quad["g2_is"]["mean"], quad["g2_is"]["mean_se"]
    st = dict(sde=type(sde).__name__, D=q.dim, n_samples=n_samples, var_uniform=var_u, var_is=var_i,
              variance_ratio=var_u / var_i, se_uniform=se_u, se_is=se_i, J_DSM_quadrature=j_q,
              J_DSM_quadrature_se=se_q, n_quad_samples=n_quad_samples,
              variance_ratio_quadrature=quad["g2"]["var"] / quad["g2_is"]["var"])
    return [
        engine.identity("is_same_mean", "Song+21", "E_U[t](g2 DSM) = E_p_IS(g2 DSM) = J_DSM(g^2)", mu, mi,
                        math.hypot(se_u, se_i), settings=st),
        engine.identity("is_matches_quadrature", "Song+21", "E_p_IS(g2 DSM) = J_DSM(g^2) by log-SNR quadrature", mi,
                        j_q, math.hypot(se_i, se_q), settings=st),
    ]


def estimator_moments(q: GaussianMixture, model, sde: SDE, *, seed: int = 0, n_samples: int = 512,
                      n_panels: int = 8, order: int = 12) -> dict[str, dict[str, float]]:
    """Mean and per-example variance of the two single-sample estimators of J_DSM(θ; g²) (Song+21 §5,
    THEORY.md §2.6): uniform t (weighting ``"g2"``) and t ~ p(t) ∝ g²/σ² (``"g2_is"``), by quadrature
    over t in log SNR (:func:`engine.time_grid`) with Monte Carlo over (x₀, ε) at each node (common
    paths): for an estimator u(t) with t ~ ρ, E[u] = ∫ ρ(t) E[u(t)] dt and Var[u] = ∫ ρ(t) E[u(t)²] dt − E[u]².

    The uniform-t estimator is heavy-tailed (its integrand grows like D/(2t) as t → 0, and rare small t
    dominate its second moment), so the sample variance of its draws underestimates its variance in most
    runs; the quadrature does not. Returns {"g2": ..., "g2_is": ...}, each with ``mean``, ``mean_se``,
    ``var`` and ``second_moment_se`` (the SE over paths of the per-path integrals)."""
    engine.check_n_samples(n_samples)
    key = engine.key_from_seed(seed)
    k0, k1 = jax.random.split(key)
    x0 = q.sample(k0, n_samples)
    grid = engine.time_grid(sde, sde.t_min, sde.T, n_panels=n_panels, order=order)
    n, m = n_samples, grid.n
    eps = engine.path_noise(k1, n, m, q.dim).reshape(n * m, -1)
    x0r = jnp.repeat(x0, m, axis=0)
    tr = jnp.tile(jnp.asarray(grid.t), n)
    density = {"g2": np.full(m, 1.0 / (float(sde.T) - float(sde.t_min))),
               "g2_is": np.asarray(sde.importance_pdf(jnp.asarray(grid.t)))}
    out = {}
    for w, rho in density.items():
        vals = np.asarray(dsm_loss_terms(model, sde, x0r, tr, eps, w)).reshape(n, m)
        first, second = vals @ (grid.w_dt * rho), vals**2 @ (grid.w_dt * rho)  # per-path integrals
        mean = float(first.mean())
        out[w] = dict(mean=mean, mean_se=engine.mc_mean(first)[1], var=float(second.mean()) - mean**2,
                      second_moment_se=engine.mc_mean(second)[1])
    return out

