"""Linear SDEs dx = f(t) x dt + g(t) dw: their Gaussian kernels, derived (THEORY.md §1).

Every SDE here is written on its own *clock* c(t) (a monotone change of time):
f(t) = f_c(c(t)) c'(t) and g(t)² = g²_c(c(t)) c'(t). The clocks are

* VP / sub-VP (Song et al. 2021, Eq. 11 and 12; score_sde): c = B(t) = ∫_0^t β, derived by
  integrating the linear β(t) = β_min + t(β_max − β_min); f_c = −½, g²_c = 1 (VP) or
  1 − e^{−2c} (sub-VP).
* VE (Song et al. 2021, Eq. 9): c = log(σ(t)²/σ_min²) = 2t log r, f_c = 0, g²_c = σ_min² e^c, so that
  g² = dσ(t)²/dt with σ(t) = σ_min r^t. The exact kernel
  starts at t = 0; the score_sde code convention σ_t = σ(t) is the kernel started at t = −∞.
* log-SNR (VDM, Kingma et al. 2021, Eq. 3–4 and App. A): c = γ(t) (any increasing γ),
  f_c = −½ sigmoid(c), g²_c = sigmoid(c), kernel started at γ = −∞ (SNR = ∞).
* Li & Yan 2024 (arXiv 2408.16765, §2): VP with β(t) = 1/(1 − t), i.e. c = −log(1 − t).

The kernel is *derived* by integration (Song et al. 2021, Eq. 5; THEORY.md §1.1):

    log α = F(c) = ∫_{c_0}^{c} f_c,      σ²/α² = G(c) = ∫_{c_0}^{c} g²_c e^{−2F},

so SNR = 1/G and log SNR = −log G. :func:`identities` re-checks, in t, that α and σ² solve
dα/dt = f α and dσ²/dt = 2 f σ² + g², their initial conditions, and the identity
g²/σ² = −d log SNR/dt (THEORY.md Eq. 1.1) — all as exact sympy zero checks.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import sympy as sp

from theory._sym import is_zero, lambdify

__all__ = [
    "t",
    "c",
    "SDESpec",
    "Kernel",
    "SDES",
    "spec",
    "kernel",
    "generic_kernel",
    "identities",
    "functions",
]

t = sp.Symbol("t", positive=True)
c = sp.Symbol("c", real=True)
_u = sp.Symbol("u", positive=True)
_cc = sp.Symbol("cc", real=True)

beta_min, beta_max = sp.symbols("beta_min beta_max", positive=True)
sigma_min, sigma_max = sp.symbols("sigma_min sigma_max", positive=True)
gamma_min, gamma_max = sp.symbols("gamma_min gamma_max", real=True)


def _sigmoid(x):
    return sp.exp(x) / (1 + sp.exp(x))


@dataclass(frozen=True)
class SDESpec:
    """An SDE given by its clock c(t) and its drift and diffusion per unit clock."""

    name: str
    params: tuple[sp.Symbol, ...]
    clock: sp.Expr  # c(t)
    f_c: sp.Expr  # in the clock symbol c
    g2_c: sp.Expr
    clock_start: sp.Expr | int  # the clock value where the kernel starts (α = 1, σ = 0)
    prior_var: sp.Expr
    defaults: dict = field(default_factory=dict, compare=False, hash=False)
    start_time: sp.Expr | int | None = 0  # the t of clock_start (None: t = −∞, no check at t = 0)

    @property
    def f(self) -> sp.Expr:
        """f(t), the drift coefficient."""
        return self.f_c.subs(c, self.clock) * sp.diff(self.clock, t)

    @property
    def g2(self) -> sp.Expr:
        """g(t)², the squared diffusion (Song et al.'s likelihood weighting λ = g²)."""
        return self.g2_c.subs(c, self.clock) * sp.diff(self.clock, t)


@functools.cache
def _vp_clock(beta: sp.Expr) -> sp.Expr:
    """B(t) = ∫_0^t β(u) du."""
    return sp.expand(sp.integrate(beta.subs(t, _u), (_u, 0, t)))


def _build() -> dict[str, SDESpec]:
    beta_lin = beta_min + t * (beta_max - beta_min)
    B = _vp_clock(beta_lin)
    ve_clock = 2 * t * sp.log(sigma_max / sigma_min)  # c = log(σ(t)²/σ_min²), σ(t) = σ_min r^t
    ve_g2 = sigma_min**2 * sp.exp(c)  # g² = dσ(t)²/dt = σ_min² e^c dc/dt
    vp_defaults = {beta_min: sp.Rational(1, 10), beta_max: sp.Integer(20)}
    ve_defaults = {sigma_min: sp.Rational(1, 100), sigma_max: sp.Integer(50)}
    g_defaults = {gamma_min: sp.Rational(-133, 10), gamma_max: sp.Integer(5)}
    gamma_lin = gamma_min + (gamma_max - gamma_min) * t
    gamma_cos = gamma_min + (gamma_max - gamma_min) * (1 - sp.cos(sp.pi * t)) / 2
    specs = [
        SDESpec("vp", (beta_min, beta_max), B, -sp.Rational(1, 2), sp.Integer(1), 0, sp.Integer(1), vp_defaults),
        SDESpec("subvp", (beta_min, beta_max), B, -sp.Rational(1, 2), 1 - sp.exp(-2 * c), 0, sp.Integer(1), vp_defaults),
        SDESpec("ve_exact", (sigma_min, sigma_max), ve_clock, sp.Integer(0), ve_g2, 0, sigma_max**2, ve_defaults),
        SDESpec(
            "ve_score_sde", (sigma_min, sigma_max), ve_clock, sp.Integer(0), ve_g2, -sp.oo, sigma_max**2, ve_defaults, None
        ),
        SDESpec(
            "logsnr_linear", (gamma_min, gamma_max), gamma_lin, -_sigmoid(c) / 2, _sigmoid(c), -sp.oo, sp.Integer(1),
            g_defaults, None,
        ),
        SDESpec(
            "logsnr_cosine", (gamma_min, gamma_max), gamma_cos, -_sigmoid(c) / 2, _sigmoid(c), -sp.oo, sp.Integer(1),
            g_defaults, None,
        ),
        SDESpec("li_yan", (), _vp_clock(1 / (1 - t)), -sp.Rational(1, 2), sp.Integer(1), 0, sp.Integer(1), {}),
    ]
    return {s.name: s for s in specs}


SDES: dict[str, SDESpec] = _build()


def spec(name: str) -> SDESpec:
    if name not in SDES:
        raise ValueError(f"unknown SDE {name!r}; choose one of {sorted(SDES)}.")
    return SDES[name]


@dataclass(frozen=True)
class Kernel:
    """The derived kernel q_{0t} = N(α_t x_0, σ_t² I), in t, and on the clock (F, G of c)."""

    F_c: sp.Expr  # log α as a function of the clock symbol c
    G_c: sp.Expr  # σ²/α² = 1/SNR as a function of c
    alpha: sp.Expr
    sigma2: sp.Expr
    log_snr: sp.Expr
    d_log_snr: sp.Expr
    f: sp.Expr
    g2: sp.Expr
    clock: sp.Expr

    @property
    def snr(self) -> sp.Expr:
        return sp.exp(self.log_snr)

    @property
    def G(self) -> sp.Expr:
        """1/SNR(t) = σ_t²/α_t² in t."""
        return self.G_c.subs(c, self.clock)

    @property
    def F(self) -> sp.Expr:
        """log α_t in t."""
        return self.F_c.subs(c, self.clock)


@functools.cache
def kernel(name: str) -> Kernel:
    """Solve dα/dt = f α, dσ²/dt = 2 f σ² + g² from the start of the clock, by integration."""
    s = spec(name)
    F_c = sp.simplify(sp.integrate(s.f_c.subs(c, _cc), (_cc, s.clock_start, c), conds="none"))
    integrand = sp.powsimp(sp.expand(s.g2_c * sp.exp(-2 * F_c)), force=True)
    G_c = sp.integrate(integrand.subs(c, _cc), (_cc, s.clock_start, c), conds="none")
    G_c = sp.factor(sp.together(sp.powsimp(sp.expand(G_c.rewrite(sp.exp)), force=True)))
    G_c = sp.powsimp(G_c, force=True)
    F = F_c.subs(c, s.clock)
    G = G_c.subs(c, s.clock)
    alpha = sp.exp(F)
    sigma2 = sp.exp(2 * F) * G
    log_snr = -sp.expand_log(sp.log(G_c), force=True).subs(c, s.clock)
    return Kernel(F_c, G_c, alpha, sigma2, log_snr, sp.diff(log_snr, t), s.f, s.g2, s.clock)


@functools.cache
def generic_kernel() -> dict[str, sp.Expr]:
    """The kernel for arbitrary f, g written through F = ∫f and G = ∫ g²/α² (undefined functions)."""
    F = sp.Function("F")(t)
    G = sp.Function("G")(t)
    alpha = sp.exp(F)
    sigma2 = sp.exp(2 * F) * G
    f = sp.diff(F, t)
    g2 = sp.exp(2 * F) * sp.diff(G, t)  # G' = g²/α² (definition of G)
    return {"alpha": alpha, "sigma2": sigma2, "f": f, "g2": g2, "log_snr": -sp.log(G)}


@functools.cache
def identities() -> dict[str, sp.Expr]:
    """Expressions that must simplify to 0: the kernel ODEs, initial conditions, Eq. 1.1, VP facts."""
    out: dict[str, sp.Expr] = {}
    gk = generic_kernel()
    out["generic/alpha_ode"] = sp.diff(gk["alpha"], t) - gk["f"] * gk["alpha"]
    out["generic/sigma2_ode"] = sp.diff(gk["sigma2"], t) - 2 * gk["f"] * gk["sigma2"] - gk["g2"]
    out["generic/g2_over_sigma2_is_minus_dlogsnr"] = gk["g2"] / gk["sigma2"] + sp.diff(gk["log_snr"], t)
    for name, s in SDES.items():
        k = kernel(name)
        out[f"{name}/alpha_ode"] = sp.diff(k.alpha, t) - k.f * k.alpha
        out[f"{name}/sigma2_ode"] = sp.diff(k.sigma2, t) - 2 * k.f * k.sigma2 - k.g2
        out[f"{name}/g2_over_sigma2_is_minus_dlogsnr"] = k.g2 / k.sigma2 + k.d_log_snr
        out[f"{name}/log_snr_definition"] = sp.exp(k.log_snr) - k.alpha**2 / k.sigma2
        if s.start_time is not None:
            out[f"{name}/alpha_at_0"] = sp.limit(k.alpha, t, s.start_time) - 1
            out[f"{name}/sigma2_at_0"] = sp.limit(k.sigma2, t, s.start_time)
    # Variance-preserving SDEs: α² + σ² = 1 and g² = σ² γ'(t) with γ = −log SNR (VDM; THEORY.md §4.7).
    for name in ("vp", "logsnr_linear", "logsnr_cosine", "li_yan"):
        k = kernel(name)
        out[f"{name}/variance_preserving"] = k.alpha**2 + k.sigma2 - 1
        out[f"{name}/g2_is_sigma2_gamma_prime"] = k.g2 - k.sigma2 * (-k.d_log_snr)
    # The VE code convention is the exact kernel with the data pre-convolved with N(0, σ_min²).
    out["ve/score_sde_is_exact_plus_sigma_min2"] = kernel("ve_score_sde").sigma2 - kernel("ve_exact").sigma2 - sigma_min**2
    # Li & Yan: α² = 1 − t and σ² = t ("t is the noise variance").
    out["li_yan/alpha2_is_1_minus_t"] = kernel("li_yan").alpha ** 2 - (1 - t)
    out["li_yan/sigma2_is_t"] = kernel("li_yan").sigma2 - t
    return out


def check_identities() -> dict[str, bool]:
    """name → whether the identity simplifies to exactly 0."""
    return {k: is_zero(v) for k, v in identities().items()}


QUANTITIES = ("alpha", "sigma2", "log_snr", "d_log_snr", "f", "g2", "F", "G")


@functools.cache
def functions(name: str, module: str = "numpy") -> dict[str, Callable]:
    """Lambdified kernel quantities of SDE ``name``: each is ``fn(t, *params)`` (params as in
    :attr:`SDESpec.params`, e.g. (beta_min, beta_max) for VP), elementwise in ``t``."""
    s, k = spec(name), kernel(name)
    args = (t, *s.params)
    return {q: lambdify(args, getattr(k, q), module) for q in QUANTITIES}
