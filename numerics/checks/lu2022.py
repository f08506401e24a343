"""Lu, Zheng, Bao, Chen, Li & Zhu 2022, *Maximum Likelihood Training for Score-Based Diffusion ODEs
by High-Order Denoising Score Matching* (THEORY.md §3).

Closed form on the affine family (:mod:`numerics.checks.affine`, exact model laws):
* Eq. (3.1): KL(q_ε ‖ p_ε^ODE) = KL(q_T ‖ π) + J_ODE, with the ODE model's *own* score;
* first-order gap: KL(q_ε‖p^ODE) > KL(q_T‖π) + J_SM when J_Diff > 0 (the SDE bound fails for the ODE);
* Cauchy–Schwarz (§3.2): KL(q_ε‖p^ODE) ≤ KL(q_T‖π) + √(J_SM · J_Fisher);
* high-order bound (§3.3): √D_F(q_t‖p_t^ODE) ≤ y(t) (Grönwall, driven by first- and second-order
  errors; e_3 = 0 here) and KL(q_ε‖p^ODE) ≤ KL(q_T‖π) + √(J_SM · ½∫g² y²) — the gap that first-order
  matching leaves is closed once the higher-order errors enter the bound.

Exact on mixtures (§3.5–3.6, posterior moments of THEORY.md §6.3 against the mixture's Hessian and
∇Δlog q): the minimisers of the second-order (full and trace) and third-order DSM objectives.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from numerics.checks import engine
from numerics.checks.affine import AffineModel, affine_summary
from numerics.checks.engine import CheckResult
from numerics.mixture import GaussianMixture
from numerics.sde import SDE

__all__ = ["check_lu_affine", "check_second_order_minimiser", "check_third_order_minimiser", "posterior_c_moments"]

PAPER = "Lu+22"


def check_lu_affine(mu, s2, model: AffineModel, sde: SDE, *, prior: str = "sde") -> list[CheckResult]:
    """Lu+22 (3.1), first-order gap, Cauchy–Schwarz and high-order (Grönwall) bounds, closed form."""
    s = affine_summary(mu, s2, model, sde, prior=prior)
    st = dict(sde=type(sde).__name__, D=len(np.atleast_1d(mu)), J_SM=s.J_SM, J_ODE=s.J_ODE, J_Diff=s.J_Diff,
              J_Fisher=s.J_Fisher, J_Fisher_bound=s.J_Fisher_bound, KL_T=s.kl_T, fisher_ratio_max=s.fisher_ratio_max,
              method="closed form, affine family; ODE-model score from its Gaussian law")
    scale = max(1.0, abs(s.kl_ode))
    return [
        engine.identity("lu_ode_kl_identity", PAPER, "(3.1): KL(q||p_ODE) = KL(q_T||pi) + J_ODE",
                        s.kl_ode, s.kl_T + s.J_ODE, 0.0, atol=1e-7 * scale, settings=st),
        engine.inequality("lu_first_order_gap", PAPER, "KL(q_T||pi) + J_SM <= KL(q||p_ODE) iff J_Diff >= 0",
                          s.kl_T + s.J_SM, s.kl_ode, 0.0, atol=1e-8 * scale, settings=st),
        engine.inequality("lu_cauchy_schwarz", PAPER, "§3.2: KL(q||p_ODE) <= KL_T + sqrt(J_SM J_Fisher)",
                          s.kl_ode, s.kl_T + math.sqrt(s.J_SM * s.J_Fisher), 0.0, atol=1e-7 * scale, settings=st),
        engine.inequality("lu_high_order_bound", PAPER, "§3.3: KL(q||p_ODE) <= KL_T + sqrt(J_SM J_F[d1,d2,d3])",
                          s.kl_ode, s.kl_T + math.sqrt(s.J_SM * s.J_Fisher_bound), 0.0, atol=1e-7 * scale, settings=st),
        engine.inequality("lu_fisher_gronwall", PAPER, "§3.3: D_F(q_t||p_t^ODE) <= y(t)^2 for all t (max ratio)",
                          s.fisher_ratio_max, 1.0, 0.0, atol=1e-6, settings=st),
    ]


def posterior_c_moments(q: GaussianMixture, sde: SDE, t, x, s_hat):
    """Exact E[c | x_t], E[c cᵀ | x_t], E[‖c‖² c | x_t] for c = σ_t ŝ + ε (THEORY.md §3.5, §6.3),
    from the mixture posterior: ε | x_t, k ~ N((x − α m_k)/σ, α² S_k/σ²)."""
    alpha, sigma = sde.mean_coeff(t), sde.std(t)
    w, m, S = q.posterior(sde, t, x)  # (K,), (K, D), (K, D, D)
    mc = (x[None, :] - alpha * m) / sigma + sigma * s_hat[None, :]  # means of c per component
    Sc = alpha**2 * S / sigma**2
    e1 = w @ mc
    e2 = jnp.einsum("k,ki,kj->ij", w, mc, mc) + jnp.einsum("k,kij->ij", w, Sc)
    tr = jnp.trace(Sc, axis1=-2, axis2=-1)
    e3 = w @ ((jnp.sum(mc**2, -1) + tr)[:, None] * mc + 2.0 * jnp.einsum("kij,kj->ki", Sc, mc))
    return e1, e2, e3


def _check_points(q, sde, t, xs, deltas):
    H = q._diffuse(sde.mean_coeff(t), sde.variance(t)).hessian(xs)
    s = q._diffuse(sde.mean_coeff(t), sde.variance(t)).score(xs)
    gl = q._diffuse(sde.mean_coeff(t), sde.variance(t)).grad_laplacian(xs)
    return H, s, gl


def check_second_order_minimiser(q: GaussianMixture, sde: SDE, *, seed: int = 0, n_points: int = 8,
                                 delta_scale: float = 0.5) -> list[CheckResult]:
    """Lu+22 §3.5 (THEORY.md §8 item 14): s_2* = (E[ccᵀ|x_t] − I)/σ² = ∇²log q_t + δδᵀ (full) and
    tr s_2* = Δlog q_t + ‖δ‖² (trace), δ = ŝ_1 − ∇log q_t, exact (posterior moments vs the mixture
    Hessian), at random (x_t, t, δ). Max abs error is the gap; atol 1e-8·scale."""
    rng = np.random.default_rng(seed)
    D = q.dim
    errs_f, errs_tr, scale = [], [], 1.0
    for _ in range(n_points):
        t = jnp.asarray(rng.uniform(max(sde.t_min, 0.01), sde.T))
        qt = q._diffuse(sde.mean_coeff(t), sde.variance(t))
        x = qt.sample(jax.random.PRNGKey(int(rng.integers(2**31))), 1)[0]
        s = qt.score(x)
        H = qt.hessian(x)
        delta = jnp.asarray(rng.normal(size=D)) * delta_scale / jnp.sqrt(sde.variance(t))
        _, e2, _ = posterior_c_moments(q, sde, t, x, s + delta)
        sig2 = sde.variance(t)
        s2 = (e2 - jnp.eye(D)) / sig2
        target = H + jnp.outer(delta, delta)
        scale = max(scale, float(jnp.max(jnp.abs(target))))
        errs_f.append(float(jnp.max(jnp.abs(s2 - target))))
        errs_tr.append(float(abs(jnp.trace(s2) - (jnp.trace(H) + delta @ delta))))
    st = dict(D=D, K=q.n_components, n_points=n_points, sde=type(sde).__name__)
    return [
        engine.identity("lu_second_order_minimiser_full", PAPER, "s2* = Hess log q + delta delta^T",
                        max(errs_f), 0.0, 0.0, atol=1e-8 * scale, settings=st),
        engine.identity("lu_second_order_minimiser_trace", PAPER, "tr s2* = Lap log q + |delta|^2",
                        max(errs_tr), 0.0, 0.0, atol=1e-8 * scale * D, settings=st),
    ]


def check_third_order_minimiser(q: GaussianMixture, sde: SDE, *, seed: int = 0, n_points: int = 8,
                                delta_scale: float = 0.5) -> CheckResult:
    """Lu+22 §3.6 Eq. (3.3): E[Y|x_t]/σ³ = ∇Δlog q − ‖δ‖²δ + tr(Δ_2)δ + 2Δ_2δ, with
    Y = −‖c‖²c + (σ² tr ŝ_2 + D + 2)c + 2σ² ŝ_2 c, ŝ_2 = ∇²log q + Δ_2 (random symmetric), exact."""
    rng = np.random.default_rng(seed)
    D = q.dim
    errs, scale = [], 1.0
    for _ in range(n_points):
        t = jnp.asarray(rng.uniform(max(sde.t_min, 0.01), sde.T))
        qt = q._diffuse(sde.mean_coeff(t), sde.variance(t))
        x = qt.sample(jax.random.PRNGKey(int(rng.integers(2**31))), 1)[0]
        sig2 = sde.variance(t)
        sig = jnp.sqrt(sig2)
        s, H, gl = qt.score(x), qt.hessian(x), qt.grad_laplacian(x)
        delta = jnp.asarray(rng.normal(size=D)) * delta_scale / sig
        A = rng.normal(size=(D, D))
        d2 = jnp.asarray(0.5 * (A + A.T)) * delta_scale / sig2
        s2hat = H + d2
        e1, _, e3 = posterior_c_moments(q, sde, t, x, s + delta)
        EY = -e3 + (sig2 * jnp.trace(s2hat) + D + 2.0) * e1 + 2.0 * sig2 * s2hat @ e1
        lhs = EY / sig**3
        rhs = gl - (delta @ delta) * delta + jnp.trace(d2) * delta + 2.0 * d2 @ delta
        scale = max(scale, float(jnp.max(jnp.abs(rhs))))
        errs.append(float(jnp.max(jnp.abs(lhs - rhs))))
    return engine.identity("lu_third_order_minimiser", PAPER, "(3.3): E[Y|x]/sigma^3 = grad Lap log q - |d|^2 d + tr(D2) d + 2 D2 d",
                           max(errs), 0.0, 0.0, atol=1e-8 * scale,
                           settings=dict(D=D, K=q.n_components, n_points=n_points, sde=type(sde).__name__))
