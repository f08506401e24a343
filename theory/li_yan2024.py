"""Li & Yan 2024, *A Score-Based Density Formula, with Applications in Diffusion Generative Models*
(arXiv 2408.16765), derived and verified on Gaussian data.

Forward process (their §2): dX = −X/(2(1−t)) dt + dB/√(1−t), i.e. VP with β = 1/(1−t) (sde.py:
α² = 1 − t, σ² = t, X_1 ~ N(0, I) exactly). Song's Theorem 2 tightness identity (song2021.py) with
ε = 0, T = 1 and q_1 = N(0, I) gives (THEORY.md Eq. 5.1)

    log q_0(x) = −(D/2) log(2πe) − ½ ∫_0^1 { (1/(1−t)) E[‖s_t(X_t) + (X_t − √(1−t) x)/t‖² | X_0 = x] − D/t } dt,

and its DDPM discretisation at t_k = 1 − ᾱ_k (THEORY.md §5.3).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import sympy as sp

from theory import sde as _sde
from theory._sym import gaussian_expectation, is_zero, lambdify

__all__ = ["density_formula", "identities", "check_identities", "functions", "ddpm_log_density"]

x, mu, z = sp.symbols("x mu z", real=True)
s2, abar, ak = sp.symbols("s2 abar alpha_k", positive=True)
t = _sde.t


def _score(y, a2, sig2):
    return -(y - sp.sqrt(a2) * mu) / (a2 * s2 + sig2)


@functools.cache
def density_formula() -> dict[str, sp.Expr]:
    """Integrands (D = 1) and the integrated right-hand side for Gaussian data N(μ, s²)."""
    k = _sde.kernel("li_yan")
    a2, sig2 = sp.simplify(k.alpha**2), sp.simplify(k.sigma2)  # 1 − t, t
    y = sp.sqrt(a2) * x + sp.sqrt(sig2) * z
    dsm_inner = gaussian_expectation((_score(y, a2, sig2) + (y - sp.sqrt(a2) * x) / t) ** 2, z, 0, 1)
    integrand = sp.factor(sp.simplify(dsm_inner / (1 - t) - 1 / t))
    # SM form from the general identity: g²(2 s' + s²) − 2 D f.
    yy = sp.Symbol("yy", real=True)
    sc = _score(yy, a2, sig2)
    sm_inner = gaussian_expectation((k.g2 * (2 * sp.diff(sc, yy) + sc**2) - 2 * k.f).subs(yy, yy), yy, sp.sqrt(a2) * x, sig2)
    rhs = -sp.log(2 * sp.pi * sp.E) / 2 - sp.integrate(sp.apart(integrand, t), (t, 0, 1), conds="none") / 2
    return {"integrand_dsm": integrand, "integrand_sm": sp.simplify(sm_inner), "rhs": rhs}


@functools.cache
def identities() -> dict[str, sp.Expr]:
    out: dict[str, sp.Expr] = {}
    k = _sde.kernel("li_yan")
    d = density_formula()
    logq0 = -((x - mu) ** 2) / (2 * s2) - sp.log(2 * sp.pi * s2) / 2
    out["formula/reproduces_log_q0"] = sp.expand(sp.expand_log(d["rhs"] - logq0, force=True))
    out["formula/dsm_equals_sm_integrand"] = d["integrand_dsm"] - d["integrand_sm"]
    out["sde/g2_and_minus_2f_are_1_over_1_minus_t"] = (k.g2 - 1 / (1 - t)) ** 2 + (-2 * k.f - 1 / (1 - t)) ** 2
    # DDPM: t_k = 1 − ᾱ_k ⇒ Δt_k/(1 − t_k) = (1 − α_k)/α_k with ᾱ_{k} = α_k ᾱ_{k−1}.
    tk, tkm1 = 1 - abar, 1 - abar / ak
    out["ddpm/step_weight"] = (tk - tkm1) / (1 - tk) - (1 - ak) / ak
    return out


def check_identities() -> dict[str, bool]:
    return {k: is_zero(v) for k, v in identities().items()}


@functools.cache
def _ddpm_summand() -> sp.Expr:
    """((1−α_k)/α_k) {E‖s_k(X_k) + (X_k − √ᾱ_k x)/(1 − ᾱ_k)‖² − ᾱ_k/(1 − ᾱ_k)} for D = 1."""
    y = sp.sqrt(abar) * x + sp.sqrt(1 - abar) * z
    inner = gaussian_expectation((_score(y, abar, 1 - abar) + (y - sp.sqrt(abar) * x) / (1 - abar)) ** 2, z, 0, 1)
    return (1 - ak) / ak * (inner - abar / (1 - abar))


@functools.cache
def functions(module: str = "numpy") -> dict[str, Callable]:
    """``integrand_dsm(x, mu, s2, t)`` (D = 1) and ``ddpm_summand(x, mu, s2, abar, alpha_k)``."""
    d = density_formula()
    return {
        "integrand_dsm": lambdify((x, mu, s2, t), d["integrand_dsm"], module),
        "ddpm_summand": lambdify((x, mu, s2, abar, ak), _ddpm_summand(), module, rewrite=False),
    }


def ddpm_log_density(x_: float, mu_: float, s2_: float, betas) -> float:
    """Discrete (DDPM) density formula (THEORY.md §5.3), D = 1, exact per-step expectations."""
    alphas = 1.0 - np.asarray(betas, dtype=np.float64)
    abars = np.cumprod(alphas)
    terms = functions("numpy")["ddpm_summand"](x_, mu_, s2_, abars, alphas)
    return float(-0.5 * np.log(2 * np.pi * np.e) - 0.5 * np.sum(terms))
