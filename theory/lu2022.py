"""Lu, Zheng, Bao, Chen, Li & Zhu 2022, *Maximum Likelihood Training for Score-Based Diffusion ODEs by
High-Order Denoising Score Matching* (ICML 2022, arXiv 2206.08265), checked on Gaussian data.

* Second-order DSM target (their §4.1; THEORY.md §3.5): σ² ∇²log q_t = E[εεᵀ|x_t] − I − σ² s sᵀ, and the
  minimiser with a stop-gradient first-order error δ: (E[ccᵀ|x_t] − I)/σ² = ∇²log q_t + δδᵀ,
  c = σ ŝ_1 + ε.
* Third-order DSM target (their §4.2; THEORY.md Eq. 3.3): E[Y|x_t]/σ³ = ∇Δlog q − ‖δ‖²δ + tr(Δ_2)δ + 2Δ_2δ
  with Y = −‖c‖²c + (σ² tr ŝ_2 + D + 2)c + 2σ² ŝ_2 c.
* ODE-model KL (their Theorem 3.1 form; THEORY.md Eq. 3.1): d/dt KL(q_t ‖ p_t^ODE)
  = ½ g² E_q[(s_θ − ∇log q_t)(∇log q_t − ∇log p_t)], derived for Gaussian q_t, affine s_θ and the
  Gaussian ODE marginals p_t; hence KL(q_0‖p_0) = KL(q_T‖π) + J_ODE.
* Fisher-divergence dynamics (THEORY.md Eq. 3.2), the form through which the orders 1–3 bound the KL,
  on the same family; and the Cauchy–Schwarz bound KL ≤ KL(q_T‖π) + √(J_SM J_Fisher).
All in 1-D (per dimension; diagonal data and diagonal models factorise).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import sympy as sp

from theory._sym import gaussian_expectation, is_zero, lambdify

__all__ = ["eps_posterior", "identities", "check_identities", "functions", "cauchy_schwarz_bound"]

x, mu, delta, Delta2, e = sp.symbols("x mu delta Delta_2 epsilon_noise", real=True)
alpha, sigma, s2 = sp.symbols("alpha sigma s2", positive=True)


@functools.cache
def eps_posterior() -> dict[str, sp.Expr]:
    """ε | x_t for x_0 ~ N(μ, s²), x_t = α x_0 + σ ε: Gaussian conditioning on the joint (ε, x_t)."""
    v = alpha**2 * s2 + sigma**2
    mean = sigma * (x - alpha * mu) / v  # Cov(ε, x_t)/Var(x_t) (x_t − E x_t)
    var = 1 - sigma**2 / v
    logq = -((x - alpha * mu) ** 2) / (2 * v) - sp.log(2 * sp.pi * v) / 2
    score = sp.diff(logq, x)
    return {"mean": mean, "var": var, "score": score, "hessian": sp.diff(score, x), "third": sp.diff(score, x, 2)}


def _cond(expr):
    p = eps_posterior()
    return gaussian_expectation(expr, e, p["mean"], p["var"])


@functools.cache
def identities() -> dict[str, sp.Expr]:
    p = eps_posterior()
    s, H, third = p["score"], p["hessian"], p["third"]
    out: dict[str, sp.Expr] = {}
    out["tweedie/eps_mean"] = _cond(e) + sigma * s
    out["second_order/tweedie_form"] = sigma**2 * H - (_cond(e**2) - 1 - sigma**2 * s**2)
    c = sigma * (s + delta) + e
    out["second_order/minimiser_H_plus_delta2"] = (_cond(c**2) - 1) / sigma**2 - (H + delta**2)
    s2_hat = H + Delta2
    Y = -(c**3) + (sigma**2 * s2_hat + 1 + 2) * c + 2 * sigma**2 * s2_hat * c
    out["third_order/minimiser"] = _cond(Y) / sigma**3 - (third - delta**3 + Delta2 * delta + 2 * Delta2 * delta)
    out["third_order/gaussian_grad_laplacian_zero"] = third
    # ODE KL rate and Fisher dynamics on Gaussian q_t = N(m, v), affine s_θ = −(x − m̂)/v̂, p_t = N(μp, w).
    m, mh, mp, f = sp.symbols("m mhat mu_p f", real=True)
    v, vh, w, g2 = sp.symbols("v vhat w g2", positive=True)
    sq, sth, sp_ = -(x - m) / v, -(x - mh) / vh, -(x - mp) / w
    rates = {m: f * m, v: 2 * f * v + g2, mp: f * mp + g2 * (mp - mh) / (2 * vh), w: 2 * (f + g2 / (2 * vh)) * w}
    kl = sp.log(w / v) / 2 + (v + (m - mp) ** 2) / (2 * w) - sp.Rational(1, 2)
    dkl = sum(sp.diff(kl, k) * r for k, r in rates.items())
    rhs = g2 / 2 * gaussian_expectation((sth - sq) * (sq - sp_), x, m, v)
    out["ode_kl/rate"] = dkl - rhs
    DF = gaussian_expectation((sq - sp_) ** 2, x, m, v)
    dDF = sum(sp.diff(DF, k) * r for k, r in rates.items())
    u = sp_ - sq
    e1, E2, e3 = sth - sq, sp.diff(sth, x) - sp.diff(sq, x), sp.Integer(0)
    rhs_F = g2 * gaussian_expectation(u * (e3 + E2 * sp_ + sp.diff(sp_, x) * e1), x, m, v)
    rhs_F += g2 * gaussian_expectation(u * sp.diff(sq, x) * u, x, m, v) - 2 * f * gaussian_expectation(u**2, x, m, v)
    out["fisher_dynamics/eq_3_2"] = dDF - rhs_F
    return out


def check_identities() -> dict[str, bool]:
    return {k: is_zero(v) for k, v in identities().items()}


def cauchy_schwarz_bound(kl_T, j_sm, j_fisher):
    """KL(q_0 ‖ p_0^ODE) ≤ KL(q_T‖π) + √(J_SM(θ; g²) J_Fisher(θ)) (THEORY.md §3.2)."""
    return kl_T + (j_sm * j_fisher) ** 0.5


@functools.cache
def functions(module: str = "numpy") -> dict[str, Callable]:
    """``second_order_target(x, mu, s2, alpha, sigma, delta)`` = (E[c²|x] − 1)/σ² and
    ``third_order_target(x, mu, s2, alpha, sigma, delta, Delta_2)`` = E[Y|x]/σ³ (1-D, exact)."""
    p = eps_posterior()
    s, H = p["score"], p["hessian"]
    c = sigma * (s + delta) + e
    s2_hat = H + Delta2
    Y = -(c**3) + (sigma**2 * s2_hat + 3) * c + 2 * sigma**2 * s2_hat * c
    return {
        "second_order_target": lambdify((x, mu, s2, alpha, sigma, delta), (_cond(c**2) - 1) / sigma**2, module, rewrite=False),
        "third_order_target": lambdify((x, mu, s2, alpha, sigma, delta, Delta2), _cond(Y) / sigma**3, module, rewrite=False),
    }
