"""Song et al. 2021 Theorem 1 and Lu et al. 2022 (3.1)–(3.3) for *wrong* models, in closed form:
Gaussian data N(μ, s²) (1-D; diagonal d-D data and diagonal models are sums over dimensions) and
the affine score family s_θ(x, t) = −(x − m̂_t)/v̂_t (THEORY.md §6.2).

Symbolic (exact sympy zero checks, :func:`identities`):

* **Model marginals.** The Gaussian ansatz p_t = N(μ_t, w_t) is plugged into the model's
  Fokker–Planck equation — SDE model ∂_t p = −∂_x[(f x − g² s_θ) p] − ½ g² ∂_x² p (the reverse SDE's
  marginals, written forward in t), ODE model ∂_t p = −∂_x[(f x − ½ g² s_θ) p] — and the moment ODEs
  are *solved for* from the coefficients of the resulting polynomial in x; they equal THEORY §6.2.
* **KL rates** (from those moment ODEs and dm/dt = f m, dv/dt = 2 f v + g² for q_t = N(m, v)):

      SDE model:  d/dt KL(q_t‖p_t) = ½ g² (E_q(s_θ − ∇log p_t)² − E_q(s_θ − ∇log q_t)²)
      ODE model:  d/dt KL(q_t‖p_t) = ½ g² E_q[(s_θ − ∇log q_t)(∇log q_t − ∇log p_t)]

  Integrated over [ε, T]:  KL(q_ε‖p_ε^SDE) = KL(q_T‖π) + J_SM − J_gap,
  J_gap := ½∫ g² E_q(s_θ − ∇log p_t^SDE)² dt ≥ 0 — Theorem 1 *with its exact gap*, which is > 0
  unless s_θ is the SDE model's own score at (almost) every t (strict for a wrong model); and
  KL(q_ε‖p_ε^ODE) = KL(q_T‖π) + J_ODE (Lu's (3.1)), J_ODE − J_SM = J_Diff (no sign).
* **Grönwall growth factor** (THEORY §3.3): with K(t) ≤ 1/σ_t² the rate a = ½(g²K + 2f) is at most
  a_σ = ½ g²/σ² + f = d log σ_t/dt (as d log σ²/dt = 2f + g²/σ², THEORY §1.1), so exp(∫_t^τ a_σ) = exp(½(γ(τ) − γ(t)) + ∫_t^τ f)
  = σ_τ/σ_t, and the universal bound reads

      √D_F(q_t‖p_t^ODE) ≤ (σ_T/σ_t) √D_F(q_T‖π) + ½∫_t^T g(τ)² ρ(τ) (σ_τ/σ_t) dτ,

  ρ = ‖e_3 + E_2 ∇log p + (∇²log p) e_1‖_{L²(q_t)} (e_3 = 0 on this family). For Gaussian data the
  tight K is 1/v_t ≤ 1/σ_t² (checked: 1/σ² − 1/v = α² s²/(σ² v)).

Numeric (:func:`affine_terms`): the t-integrals (J_SM, J_ODE, J_Fisher, J_gap, the Grönwall
functions) have no elementary antiderivative for a general schedule and perturbation, so the
lambdified exact integrands and moment ODEs are integrated together, backward from T, by
``scipy.integrate.solve_ivp`` (DOP853, rtol 1e-13) — high-accuracy quadrature. Targets store them
rounded to 12 significant digits; a scipy release can move the 11th (1.17 did), so they are compared to 1e-8.

The perturbation is that of :class:`numerics.checks.affine.AffineModel`: m̂_t = α_t (μ + dm φ(t)),
v̂_t = v_t (1 + dv φ(t)), φ(t) = 4 (t/T)(1 − t/T); dv = 1/8 is THEORY §8 item 11's
v̂ = v (1 + ½ t (1 − t)) at T = 1.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import sympy as sp

from theory import sde as _sde
from theory._sym import gaussian_expectation, is_zero, lambdify

__all__ = [
    "model_moment_odes",
    "integrands",
    "identities",
    "check_identities",
    "functions",
    "affine_terms",
    "cauchy_schwarz_bound",
    "gronwall_growth_factor",
]

x = sp.Symbol("x", real=True)
m, mh, mp, f = sp.symbols("m mhat mu_p f", real=True)  # data mean, model mean, model-marginal mean
v, vh, w, g2 = sp.symbols("v vhat w g2", positive=True)
dmp, dw = sp.symbols("dmu_p dw", real=True)

_s_q = -(x - m) / v
_s_th = -(x - mh) / vh
_s_p = -(x - mp) / w
_RATES_Q = {m: f * m, v: 2 * f * v + g2}


def _normal_pdf(z, mean, var):
    return sp.exp(-((z - mean) ** 2) / (2 * var)) / sp.sqrt(2 * sp.pi * var)


@functools.cache
def model_moment_odes() -> dict[str, dict[sp.Symbol, sp.Expr]]:
    """dμ/dt, dw/dt of the SDE and ODE models' Gaussian marginals, derived from their Fokker–Planck
    equations (see the module docstring): the residual (∂_t p − rhs)/p is a quadratic in x whose
    three coefficients must vanish; solved for (dμ/dt, dw/dt)."""
    p = _normal_pdf(x, mp, w)
    dp_dt = sp.diff(p, mp) * dmp + sp.diff(p, w) * dw
    out = {}
    for kind, c, diffusion in (("sde", 1, True), ("ode", sp.Rational(1, 2), False)):
        drift = f * x - c * g2 * _s_th
        rhs = -sp.diff(drift * p, x) - (g2 / 2 * sp.diff(p, x, 2) if diffusion else 0)
        resid = sp.expand(sp.simplify((dp_dt - rhs) / p) * w**2 * vh)
        coeffs = sp.Poly(resid, x).coeffs()
        sol = sp.solve(coeffs, [dmp, dw], dict=True)
        if len(sol) != 1:
            raise AssertionError(f"{kind}: moment ODEs not uniquely determined: {sol}")
        out[kind] = {mp: sp.factor(sol[0][dmp]), w: sp.factor(sol[0][dw])}
    return out


@functools.cache
def integrands() -> dict[str, sp.Expr]:
    """Exact t-integrands (per unit t; functions of m, v, m̂, v̂, μ_p, w, f, g²), E over q_t = N(m, v):

    ``J_SM``: ½g² E(s_θ − ∇log q)²; ``J_ODE``: ½g² E(s_θ − ∇log q)(∇log p − ∇log q);
    ``J_Fisher``: ½g² E(∇log p − ∇log q)²; ``J_gap``: ½g² E(s_θ − ∇log p)²; ``rho2``: ρ² =
    E(E_2 ∇log p + (∇²log p) e_1)²; ``D_F``: E(∇log p − ∇log q)²; ``kl``: KL(N(m, v) ‖ N(μ_p, w)).
    """
    e1, u = _s_th - _s_q, _s_p - _s_q
    E2 = sp.diff(_s_th, x) - sp.diff(_s_q, x)
    r = E2 * _s_p + sp.diff(_s_p, x) * e1

    def ex(e):
        return sp.factor(gaussian_expectation(sp.expand(e), x, m, v))

    return {
        "J_SM": g2 / 2 * ex(e1**2),
        "J_ODE": g2 / 2 * ex(e1 * u),
        "J_Fisher": g2 / 2 * ex(u**2),
        "J_gap": g2 / 2 * ex((_s_th - _s_p) ** 2),
        "rho2": ex(r**2),
        "D_F": ex(u**2),
        "kl": sp.log(w / v) / 2 + (v + (m - mp) ** 2) / (2 * w) - sp.Rational(1, 2),
    }


def _kl_rate(rates_p):
    kl = integrands()["kl"]
    return sum(sp.diff(kl, k) * r for k, r in {**_RATES_Q, **rates_p}.items())


@functools.cache
def identities() -> dict[str, sp.Expr]:
    """Expressions that must be exactly 0."""
    out: dict[str, sp.Expr] = {}
    odes, I = model_moment_odes(), integrands()
    # THEORY §2.3 / §3.1 / §6.2 forms of the moment ODEs.
    out["sde_model/mean_ode"] = odes["sde"][mp] - (f * mp + g2 * (mp - mh) / vh)
    out["sde_model/var_ode"] = odes["sde"][w] - (2 * (f + g2 / vh) * w - g2)
    out["ode_model/mean_ode"] = odes["ode"][mp] - (f * mp + g2 * (mp - mh) / (2 * vh))
    out["ode_model/var_ode"] = odes["ode"][w] - 2 * (f + g2 / (2 * vh)) * w
    # Exact score and π = q_T: the model marginal equals q_t (m, v solve the model's ODEs at s_θ = s_q).
    for kind in ("sde", "ode"):
        at_q = {mh: m, vh: v, mp: m, w: v}
        out[f"{kind}_model/exact_score_reproduces_q"] = (odes[kind][mp].subs(at_q) - f * m) ** 2 + (
            odes[kind][w].subs(at_q) - (2 * f * v + g2)
        ) ** 2
    # KL rates: Theorem 1 with its exact gap (SDE) and Lu's (3.1) (ODE).
    out["theorem1/sde_kl_rate"] = _kl_rate(odes["sde"]) - (I["J_gap"] - I["J_SM"])
    out["lu_3_1/ode_kl_rate"] = _kl_rate(odes["ode"]) + I["J_ODE"]
    out["lu_3_1/J_Diff_is_cross_term"] = I["J_ODE"] - I["J_SM"] - g2 / 2 * sp.factor(
        gaussian_expectation(sp.expand((_s_th - _s_q) * (_s_p - _s_th)), x, m, v)
    )
    # Cauchy–Schwarz per t: J_ODE-integrand² ≤ J_SM-integrand · J_Fisher-integrand with the
    # Lagrange-identity remainder (1-D Gaussian: E[ab]² − E[a²]E[b²] = −(A1 B2 − A2 B1)² v for
    # a = A1 x + B1, b = A2 x + B2), hence ≤ pointwise and, by Cauchy–Schwarz in t, after integration.
    A1, B1 = 1 / v - 1 / vh, mh / vh - m / v
    A2, B2 = 1 / v - 1 / w, mp / w - m / v
    out["lu_3_2/pointwise_lagrange_identity"] = (
        I["J_ODE"] ** 2 - I["J_SM"] * I["J_Fisher"] + (g2 / 2) ** 2 * (A1 * B2 - A2 * B1) ** 2 * v
    )
    # Grönwall: the exact-Gaussian K = 1/v is ≤ 1/σ² (any data: THEORY §3.3); the universal rate
    # a_σ = ½ g²/σ² + f equals +d log σ_t/dt, so exp(∫_t^τ a_σ) = σ_τ/σ_t.
    al, s2d, sig2 = sp.symbols("alpha s2 sigma2", positive=True)
    vv = al**2 * s2d + sig2
    out["gronwall/K_gaussian_le_inverse_sigma2"] = 1 / sig2 - 1 / vv - al**2 * s2d / (sig2 * vv)
    gk = _sde.generic_kernel()  # α = e^F, σ² = e^{2F} G, γ = log G
    out["gronwall/universal_rate_is_dlog_sigma"] = (
        gk["g2"] / gk["sigma2"] / 2 + gk["f"] - sp.diff(sp.log(gk["sigma2"]), _sde.t) / 2
    )
    tau = sp.Symbol("tau", positive=True)
    gamma = -gk["log_snr"]
    F = sp.Function("F")
    log_growth = (gamma.subs(_sde.t, tau) - gamma) / 2 + F(tau) - F(_sde.t)  # ∫_t^τ f = F(τ) − F(t)
    log_ratio = (sp.log(gk["sigma2"].subs(_sde.t, tau)) - sp.log(gk["sigma2"])) / 2
    out["gronwall/growth_factor_is_sigma_ratio"] = sp.expand_log(log_growth - log_ratio, force=True)
    return out


def check_identities() -> dict[str, bool]:
    return {k: is_zero(e) for k, e in identities().items()}


def cauchy_schwarz_bound(kl_T, j_sm, j_fisher):
    """KL(q_ε ‖ p_ε^ODE) ≤ KL(q_T‖π) + √(J_SM(θ; g²) J_Fisher(θ)) (THEORY.md §3.2)."""
    return kl_T + math.sqrt(j_sm * j_fisher)


def gronwall_growth_factor(sigma_t, sigma_tau):
    """exp(∫_t^τ a) for the universal K = 1/σ²: exp(½(γ(τ) − γ(t)) + ∫_t^τ f) = σ_τ/σ_t."""
    return sigma_tau / sigma_t


@functools.cache
def functions() -> dict[str, Callable]:
    """Lambdified (numpy) moment-ODE right-hand sides ``sde_rates``/``ode_rates``
    ``(m, v, mhat, vhat, mu_p, w, f, g2) -> (dμ/dt, dw/dt)`` and the :func:`integrands` in the same
    arguments."""
    args = (m, v, mh, vh, mp, w, f, g2)
    odes = model_moment_odes()
    out: dict[str, Callable] = {}
    for k in ("sde", "ode"):
        dmu_, dw_ = (lambdify(args, odes[k][s], rewrite=False) for s in (mp, w))
        out[f"{k}_rates"] = lambda *a, _m=dmu_, _w=dw_: (_m(*a), _w(*a))
    for name, e in integrands().items():
        out[name] = lambdify(args, e, rewrite=False)
    return out


def affine_terms(
    mu, s2, dm, dv, sde_name: str, params, eps, T=1.0, prior=None, n_check: int = 64,
) -> dict:
    """Every term of Theorem 1 and Lu (3.1)–(3.3) on [ε, T] for data N(μ, s²) and the affine model
    m̂ = α(μ + dm φ), v̂ = v(1 + dv φ), φ = 4(t/T)(1 − t/T), SDE ``sde_name`` with ``params``; prior
    π = N(prior) (default: the SDE's prior N(0, prior_var)). Per dimension (sum for diagonal data).

    Returns KL_T, KL_sde, KL_ode, J_SM, J_ODE, J_Diff, J_Fisher, J_gap (Thm 1: KL_sde = KL_T + J_SM −
    J_gap), J_Fisher_bound (Grönwall, K = 1/v_t, the exact Gaussian K — as numerics.checks.affine),
    J_Fisher_bound_universal (K = 1/σ_t², growth σ_τ/σ_t), cs_bound = KL_T + √(J_SM J_Fisher),
    high_order_bound(_universal) = KL_T + √(J_SM J_Fisher_bound(_universal)), and
    fisher_ratio_max(_universal) = max over ``n_check`` t of D_F(q_t‖p_t^ODE)/y(t)² (≤ 1).
    """
    from scipy.integrate import solve_ivp

    kf, fn, s = _sde.functions(sde_name), functions(), _sde.spec(sde_name)
    p = tuple(params)
    if prior is None:
        prior = (0.0, float(sp.lambdify(s.params, s.prior_var)(*p)))

    def coeffs(t):
        a, sig2 = kf["alpha"](t, *p), kf["sigma2"](t, *p)
        phi = 4.0 * (t / T) * (1.0 - t / T)
        mt, vt = a * mu, a * a * s2 + sig2
        return mt, vt, a * (mu + dm * phi), vt * (1.0 + dv * phi), kf["f"](t, *p), kf["g2"](t, *p), sig2

    def rhs(t, y):
        mu_s, w_s, mu_o, w_o, y_v, y_s = y[:6]
        mt, vt, mht, vht, ft, gt, sig2 = coeffs(t)
        a_sde = fn["sde_rates"](mt, vt, mht, vht, mu_s, w_s, ft, gt)
        a_ode = fn["ode_rates"](mt, vt, mht, vht, mu_o, w_o, ft, gt)
        o = (mt, vt, mht, vht, mu_o, w_o, ft, gt)
        rho = math.sqrt(max(fn["rho2"](*o), 0.0))
        dy_v = -(0.5 * gt * rho + 0.5 * (gt / vt + 2 * ft) * y_v)
        dy_s = -(0.5 * gt * rho + 0.5 * (gt / sig2 + 2 * ft) * y_s)
        # accumulated integrals ∫_t^T (…) dτ: derivative −integrand(t)
        J = [-fn["J_SM"](*o), -fn["J_ODE"](*o), -fn["J_Fisher"](*o),
             -fn["J_gap"](mt, vt, mht, vht, mu_s, w_s, ft, gt), -0.5 * gt * y_v**2, -0.5 * gt * y_s**2]
        return [float(a_sde[0]), float(a_sde[1]), float(a_ode[0]), float(a_ode[1]), dy_v, dy_s, *J]

    mT, vT, *_ = coeffs(T)
    kl_T = float(fn["kl"](mT, vT, 0, 1, prior[0], prior[1], 0, 0))
    DF_T = float(fn["D_F"](mT, vT, 0, 1, prior[0], prior[1], 0, 0))
    y0 = [prior[0], prior[1], prior[0], prior[1], math.sqrt(DF_T), math.sqrt(DF_T), 0, 0, 0, 0, 0, 0]
    t_check = np.geomspace(eps, T, n_check)[::-1]
    sol = solve_ivp(rhs, (T, eps), y0, method="DOP853", rtol=1e-13, atol=1e-16, t_eval=t_check)
    if not sol.success:
        raise RuntimeError(sol.message)
    ye = sol.y[:, -1]
    me, ve, *_ = coeffs(eps)
    out = {
        "KL_T": kl_T,
        "KL_sde": float(fn["kl"](me, ve, 0, 1, ye[0], ye[1], 0, 0)),
        "KL_ode": float(fn["kl"](me, ve, 0, 1, ye[2], ye[3], 0, 0)),
        "J_SM": float(ye[6]), "J_ODE": float(ye[7]), "J_Fisher": float(ye[8]), "J_gap": float(ye[9]),
        "J_Fisher_bound": float(ye[10]), "J_Fisher_bound_universal": float(ye[11]),
    }
    out["J_Diff"] = out["J_ODE"] - out["J_SM"]
    out["cs_bound"] = cauchy_schwarz_bound(kl_T, out["J_SM"], out["J_Fisher"])
    out["high_order_bound"] = cauchy_schwarz_bound(kl_T, out["J_SM"], out["J_Fisher_bound"])
    out["high_order_bound_universal"] = cauchy_schwarz_bound(kl_T, out["J_SM"], out["J_Fisher_bound_universal"])
    ratios_v, ratios_s = [], []
    for j, tj in enumerate(sol.t):
        mt, vt, mht, vht, ft, gt, _ = coeffs(tj)
        DF = fn["D_F"](mt, vt, mht, vht, sol.y[2, j], sol.y[3, j], ft, gt)
        ratios_v.append(DF / max(sol.y[4, j] ** 2, 1e-300))
        ratios_s.append(DF / max(sol.y[5, j] ** 2, 1e-300))
    out["fisher_ratio_max"] = float(max(ratios_v))
    out["fisher_ratio_max_universal"] = float(max(ratios_s))
    return out
