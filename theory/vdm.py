"""Kingma, Salimans, Poole & Ho 2021, *Variational Diffusion Models* (NeurIPS 2021, arXiv 2107.00630).

* Discrete-time diffusion loss term (their Eq. 13 → SNR form, Eq. 14): KL(q(z_s|z_t,x) ‖ q(z_s|z_t,x̂))
  = ½ (SNR(s) − SNR(t)) (x − x̂)², derived from the Gaussian posterior of their Eq. 8–11.
* Its continuous-time limit (Eq. 15–17): T (SNR(t − 1/T) − SNR(t)) → −SNR'(t).
* Change of variables v = SNR(t) (Eq. 18): −∫ SNR'(t) h(SNR(t)) dt = ∫_{SNR_min}^{SNR_max} h(v) dv.
* Gaussian data N(μ, s²): exact optimal denoiser E[x | z_v], its mean-squared error at fixed x,
  L_∞(x) in closed form, L_T(x) for finite T (exact sum), E_x L_∞.
* Equivalence with Song's g²-weighted DSM: ½ γ'(t) ‖ε − ε̂‖² = ½ g² ‖s + ε/σ‖² for ε̂ = −σ s.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
import sympy as sp

from theory import sde as _sde
from theory._sym import gaussian_expectation, is_zero, lambdify

__all__ = ["discrete_term", "gaussian", "identities", "check_identities", "functions", "L_T_exact"]

gs, gt = sp.symbols("gamma_s gamma_t", real=True)  # γ at s < t
x, xh, mu, eps_ = sp.symbols("x xhat mu epsilon_noise", real=True)
s2, v, vmin, vmax = sp.symbols("s2 v v_min v_max", positive=True)
_z = sp.Symbol("z", real=True)


def _vp(gamma):
    """α², σ² of the VP process from γ (Kingma et al. 2021, Eq. 3–4; derived in sde.py)."""
    k = _sde.kernel("logsnr_linear")
    return (k.alpha**2).subs(_sde.spec("logsnr_linear").clock, gamma), sp.exp(gamma) / (1 + sp.exp(gamma))


@functools.cache
def discrete_term() -> dict[str, sp.Expr]:
    """KL(q(z_s|z_t,x) ‖ q(z_s|z_t,x̂)) from the Gaussian posterior; and its SNR form."""
    a2s, s2s = 1 / (1 + sp.exp(gs)), sp.exp(gs) / (1 + sp.exp(gs))
    a2t, s2t = 1 / (1 + sp.exp(gt)), sp.exp(gt) / (1 + sp.exp(gt))
    a_ts2 = a2t / a2s  # α²_{t|s}
    var_ts = s2t - a_ts2 * s2s  # σ²_{t|s}
    var_Q = var_ts * s2s / s2t
    coeff_x = sp.sqrt(a2s) * var_ts / s2t  # μ_Q = (...) z_t + coeff_x · x
    kl = (coeff_x * (x - xh)) ** 2 / (2 * var_Q)  # equal variances: only the means differ
    snr = lambda g: sp.exp(-g)  # noqa: E731
    snr_form = (snr(gs) - snr(gt)) * (x - xh) ** 2 / 2
    return {"kl": kl, "snr_form": snr_form}


@functools.cache
def gaussian() -> dict[str, sp.Expr]:
    """Gaussian data N(μ, s²), VP process at SNR v (α² = v/(1+v), σ² = 1/(1+v)):
    ``denoiser`` E[x|z] (by Gaussian conditioning), ``mse`` E_ε (x − x̂(z_v))² at fixed x,
    ``L_inf`` = ½∫_{v_min}^{v_max} mse dv, ``E_L_inf`` = E_x L_inf."""
    a = sp.sqrt(v / (1 + v))
    sig2 = 1 / (1 + v)
    # Joint Gaussian (x, z), z = a x + σ ε: E[x|z] = μ + Cov(x,z)/Var(z) (z − a μ).
    cov_xz, var_z = a * s2, a**2 * s2 + sig2
    denoiser = mu + cov_xz / var_z * (_z - a * mu)
    err = (x - denoiser.subs(_z, a * x + sp.sqrt(sig2) * eps_)) ** 2
    mse = sp.factor(sp.simplify(gaussian_expectation(err, eps_, 0, 1)))
    L_inf = sp.simplify(sp.integrate(mse, (v, vmin, vmax)) / 2)
    E_L_inf = sp.simplify(gaussian_expectation(sp.expand(L_inf), x, mu, s2))
    return {"denoiser": denoiser, "mse": mse, "L_inf": L_inf, "E_L_inf": E_L_inf}


@functools.cache
def identities() -> dict[str, sp.Expr]:
    out: dict[str, sp.Expr] = {}
    d = discrete_term()
    out["discrete/kl_is_snr_form"] = d["kl"] - d["snr_form"]
    # Continuous limit: T (SNR(t − 1/T) − SNR(t)) → −SNR'(t), for the linear and cosine schedules.
    h = sp.Symbol("h", positive=True)  # h = 1/T: T → ∞ is h → 0⁺ (faster for sympy's limit)
    tt = _sde.t
    for name in ("logsnr_linear", "logsnr_cosine"):
        gam = _sde.spec(name).clock
        snr_t = sp.exp(-gam)
        lim = sp.limit((snr_t.subs(tt, tt - h) - snr_t) / h, h, 0, "+")
        out[f"continuous/{name}/limit_is_minus_snr_prime"] = lim + sp.diff(snr_t, tt)
    gamma = sp.Function("gamma")
    snr = lambda s: sp.exp(-gamma(s))  # noqa: E731
    # Change of variables v = SNR(t): d/dt H(SNR(t)) = SNR'(t) h(SNR(t)) with H' = h.
    H = sp.Function("H")
    h = sp.diff(H(v), v)
    out["invariance/change_of_variables"] = sp.diff(H(snr(tt)), tt) - (sp.diff(snr(tt), tt) * h.subs(v, snr(tt))).doit()
    # Gaussian: L_∞ closed form of THEORY.md §4.5 and E_x L_∞ = ½ log((1 + v_max s²)/(1 + v_min s²)).
    gsn = gaussian()
    out["gaussian/mse_form"] = gsn["mse"] - ((x - mu) ** 2 + v * s2**2) / (1 + v * s2) ** 2
    out["gaussian/E_L_inf"] = gsn["E_L_inf"] - sp.log((1 + vmax * s2) / (1 + vmin * s2)) / 2
    # Tweedie: the denoiser equals (z + σ² ∇log q(z))/α with q = N(α μ, α² s² + σ²).
    a, sig2 = sp.sqrt(v / (1 + v)), 1 / (1 + v)
    score = -(_z - a * mu) / (a**2 * s2 + sig2)
    out["gaussian/tweedie"] = gsn["denoiser"] - (_z + sig2 * score) / a
    # VDM ↔ Song: ½ γ' (ε − ε̂)² = ½ g² (s + ε/σ)² with ε̂ = −σ s, for any linear SDE.
    gk = _sde.generic_kernel()
    sv = sp.Symbol("s_theta", real=True)
    sig = sp.sqrt(gk["sigma2"])
    gamma_prime = -sp.diff(gk["log_snr"], tt)
    out["song_equivalence/pointwise"] = gamma_prime * (eps_ + sig * sv) ** 2 / 2 - gk["g2"] * (sv + eps_ / sig) ** 2 / 2
    return out


def check_identities() -> dict[str, bool]:
    return {k: is_zero(e) for k, e in identities().items()}


@functools.cache
def functions(module: str = "numpy") -> dict[str, Callable]:
    """``mse(x, mu, s2, v)``, ``L_inf(x, mu, s2, v_min, v_max)``, ``E_L_inf(s2, v_min, v_max)``,
    ``denoiser(z, mu, s2, v)``."""
    g = gaussian()
    return {
        "mse": lambdify((x, mu, s2, v), g["mse"], module),
        "L_inf": lambdify((x, mu, s2, vmin, vmax), g["L_inf"], module),
        "E_L_inf": lambdify((s2, vmin, vmax), g["E_L_inf"], module),
        "denoiser": lambdify((_z, mu, s2, v), g["denoiser"], module),
    }


def L_T_exact(x_, mu_, s2_, T: int, gamma_min, gamma_max, *, evalf: bool = False):
    """L_T(x) = ½ Σ_i (SNR(s_i) − SNR(t_i)) mse(SNR(t_i)) for a linear γ, s_i = (i−1)/T, t_i = i/T
    (exact denoiser). ``evalf=True``: 30-digit sympy evaluation (targets); else numpy float64."""
    if evalf:  # 30-digit arithmetic (mpmath) on exact rational inputs
        import mpmath

        mse = sp.lambdify((x, mu, s2, v), gaussian()["mse"], "mpmath")
        with mpmath.workdps(30):
            q = lambda a: mpmath.mpf(sp.Rational(sp.nsimplify(a)).p) / sp.Rational(sp.nsimplify(a)).q  # noqa: E731
            gmin, gmax, xx, mm, ss = q(gamma_min), q(gamma_max), q(x_), q(mu_), q(s2_)
            total = mpmath.mpf(0)
            for i in range(1, T + 1):
                snr_s = mpmath.exp(-(gmin + (gmax - gmin) * (i - 1) / mpmath.mpf(T)))
                snr_t = mpmath.exp(-(gmin + (gmax - gmin) * i / mpmath.mpf(T)))
                total += (snr_s - snr_t) * mse(xx, mm, ss, snr_t)
            return float(total / 2)
    i = np.arange(1, T + 1)
    g_s = gamma_min + (gamma_max - gamma_min) * (i - 1) / T
    g_t = gamma_min + (gamma_max - gamma_min) * i / T
    snr_t = np.exp(-g_t)
    return 0.5 * float(np.sum(np.exp(-g_t) * np.expm1(g_t - g_s) * functions("numpy")["mse"](x_, mu_, s2_, snr_t)))
