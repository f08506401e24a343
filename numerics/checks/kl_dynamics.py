"""Exact KL dynamics of two diffused laws (Song et al. 2021 App. A mechanism; Lu et al. 2022 §3;
Li & Yan 2024 §5.5; THEORY.md §5.5 and §8 item 23).

For a data mixture q and a model mixture p pushed through the same linear SDE,

    KL(q_0 ‖ p_0) − KL(q_T ‖ p_T) = ½ ∫_0^T g(t)² E_{q_t} ‖∇log q_t − ∇log p_t‖² dt.

Left side: Monte Carlo of log q − log p at X_0 = x₀ and X_T = α_T x₀ + σ_T ε on common samples.
Right side: per-path log-SNR quadrature (engine docstring) with the exact mixture scores; the
[0, t_min] piece by Gauss–Legendre in t. Paired SE of the per-sample difference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from numerics.checks import engine
from numerics.checks.engine import CheckResult
from numerics.mixture import GaussianMixture
from numerics.sde import SDE

__all__ = ["check_kl_dynamics", "score_gap_integrand"]


def score_gap_integrand(args, x_t, t, x0, eps, alpha, sigma):
    """½ ‖a(x_t, t) − b(x_t, t)‖² for args = (a, b) two score callables."""
    a, b = args
    return 0.5 * jnp.sum(jnp.square(a(x_t, t) - b(x_t, t)))


def _log_ratio(q, p, alpha, var, x):
    return engine.diffused_log_prob(q, alpha, var, x) - engine.diffused_log_prob(p, alpha, var, x)


def check_kl_dynamics(
    q: GaussianMixture,
    p: GaussianMixture,
    sde: SDE,
    *,
    seed: int = 0,
    n_samples: int = 2048,
    t0: float = 0.0,
    n_panels: int = 8,
    order: int = 12,
) -> CheckResult:
    """KL(q_{t0}‖p_{t0}) − KL(q_T‖p_T) = ½∫_{t0}^T g² E_{q_t}‖∇log q_t − ∇log p_t‖² dt (identity, MC)."""
    engine.check_n_samples(n_samples)
    key = engine.key_from_seed(seed)
    k0, k1, k2 = jax.random.split(key, 3)
    x0 = q.sample(k0, n_samples)
    eps = jax.random.normal(k1, x0.shape, dtype=x0.dtype)
    grid = engine.time_grid(sde, t0, sde.T, n_panels=n_panels, order=order)
    alpha, sigma, _, _ = engine.grid_coeffs(sde, grid.t)
    node_eps = engine.path_noise(k2, n_samples, grid.n, q.dim)
    vals = engine.eval_on_paths(score_gap_integrand, (q.score_fn(sde), p.score_fn(sde)), x0, node_eps, grid.t, alpha, sigma)
    rhs_i = vals @ jnp.asarray(grid.w_g2)
    a0, v0 = sde.mean_coeff(jnp.asarray(t0)), sde.variance(jnp.asarray(t0))
    aT, vT = sde.mean_coeff(jnp.asarray(sde.T)), sde.variance(jnp.asarray(sde.T))
    x_t0 = a0 * x0 + jnp.sqrt(v0) * eps
    x_T = aT * x0 + jnp.sqrt(vT) * eps
    kl0_i, klT_i = _log_ratio(q, p, a0, v0, x_t0), _log_ratio(q, p, aT, vT, x_T)
    lhs, rhs, se = engine.paired(kl0_i - klT_i, rhs_i)
    kl0, se0 = engine.mc_mean(kl0_i)
    klT, seT = engine.mc_mean(klT_i)
    _, se_pred = engine.mc_mean(klT_i + rhs_i)  # the right side as a prediction of KL(q_t0‖p_t0)
    return engine.identity(
        "kl_dynamics",
        "Song+21 App.A / L&Y §5.5",
        "KL(q0||p0)-KL(qT||pT) = 1/2 int g^2 E||dlog q - dlog p||^2",
        lhs,
        rhs,
        se,
        settings=dict(
            sde=type(sde).__name__, D=q.dim, K_q=q.n_components, K_p=p.n_components, n_samples=n_samples,
            t0=t0, quad_nodes=grid.n, KL_0=kl0, KL_0_se=se0, KL_T=klT, KL_T_se=seT, KL_T_plus_rhs_se=se_pred,
            method="MC over x0~q0 with CRN; per-path log-SNR Gauss-Legendre quadrature in t",
        ),
    )
