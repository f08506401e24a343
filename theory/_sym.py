"""Small sympy helpers shared by the derivations: Gaussian moments (derived by integration),
expectations of polynomials under a Gaussian, exact zero checks and stable lambdification."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import sympy as sp
from sympy.codegen.rewriting import expm1_opt, log1p_opt, optimize

__all__ = [
    "normal_moment",
    "gaussian_expectation",
    "is_zero",
    "stable",
    "lambdify",
]

_z = sp.Symbol("z", real=True)

SymLike = sp.Basic | int | float


@functools.cache
def _standard_normal_mgf_derivatives(k: int) -> tuple:
    """d^j/ds^j exp(s²/2) for j = 0..k (the standard normal moment-generating function)."""
    s = sp.Symbol("_s_mgf", real=True)
    out, d = [], sp.exp(s**2 / 2)
    for _ in range(k + 1):
        out.append(d)
        d = sp.expand(sp.diff(d, s))
    return tuple(e.subs(s, 0) for e in out)


@functools.cache
def normal_moment(k: int) -> SymLike:
    """E[Z^k] for Z ~ N(0, 1): the k-th derivative at 0 of the moment-generating function
    E[e^{sZ}] = exp(s²/2), which is itself the Gaussian integral ∫ e^{sz} φ(z) dz (checked against
    direct integration in tests/test_theory.py)."""
    return _standard_normal_mgf_derivatives(k)[k]


def normal_moment_by_integration(k: int) -> SymLike:
    """E[Z^k] by integrating z^k against the standard normal density (the slow reference)."""
    phi = sp.exp(-(_z**2) / 2) / sp.sqrt(2 * sp.pi)
    return sp.simplify(sp.integrate(_z**k * phi, (_z, -sp.oo, sp.oo)))


@functools.cache
def _raw_moment(k: int) -> tuple[sp.Expr, sp.Symbol, sp.Symbol]:
    """E[X^k] for X ~ N(m, v) as a polynomial in (m, √v): binomial expansion of (m + √v Z)^k."""
    m, r = sp.Symbol("_m_gauss", real=True), sp.Symbol("_r_gauss", positive=True)
    return sp.expand(sum(sp.binomial(k, j) * m ** (k - j) * r**j * normal_moment(j) for j in range(k + 1))), m, r


def gaussian_expectation(expr: SymLike, var: sp.Symbol, mean: SymLike, variance: SymLike) -> SymLike:
    """E[expr] for var ~ N(mean, variance), where expr is a polynomial in var.

    Collects the coefficients c_k of var^k and replaces var^k by the raw moment
    E[X^k] = Σ_j C(k, j) mean^{k−j} variance^{j/2} E[Z^j] (same value as substituting
    var = mean + √variance Z and expanding in Z, without expanding the coefficients).
    """
    poly = sp.Poly(sp.expand(expr, deep=False, mul=True, multinomial=True, power_exp=False, log=False), var)
    total = sp.Integer(0)
    for (k,), coeff in zip(poly.monoms(), poly.coeffs(), strict=True):
        mk, m, r = _raw_moment(k)
        total += coeff * mk.subs({m: mean, r: sp.sqrt(variance)}, simultaneous=True)
    return sp.expand(total)


def is_zero(expr: SymLike) -> bool:
    """Exact check that ``expr`` is identically zero (simplify, then a few stronger rewrites)."""
    if expr == 0:
        return True
    steps = (
        lambda e: sp.cancel(sp.expand(sp.powsimp(sp.expand(e), force=True))),
        sp.simplify,
        lambda e: sp.simplify(sp.expand(sp.powsimp(e.rewrite(sp.exp), force=True))),
        sp.factor,
    )
    for step in steps:
        try:
            expr = step(expr)
        except (TypeError, sp.PolynomialError):  # e.g. unevaluated Subs/Derivative objects
            continue
        if expr == 0:
            return True
    return False


_STABLE_OPTIMS = (expm1_opt, log1p_opt)  # the accuracy-relevant part of sympy's optims_c99


def stable(expr: SymLike) -> SymLike:
    """Rewrite exp(x) − 1 → expm1(x), log(1 + x) → log1p(x) for accurate floating point (only
    expressions with an exp or log can change; the others are returned as they are)."""
    if not isinstance(expr, sp.Basic) or not expr.has(sp.exp, sp.log):
        return expr
    return optimize(expr, _STABLE_OPTIMS)


def lambdify(args: Sequence[sp.Symbol], expr: SymLike, module: str = "numpy", *, rewrite: bool = True) -> Callable:
    """``sympy.lambdify`` of ``expr`` (its numerically stable form when ``rewrite``; the rewrite is
    slow on large expressions, which are instead written in terms of small stable pieces);
    module "numpy" or "jax"."""
    if module not in ("numpy", "jax"):
        raise ValueError(f"module must be 'numpy' or 'jax'; got {module!r}.")
    if rewrite and sp.count_ops(expr) <= 80:
        expr = stable(expr)
    return sp.lambdify(list(args), expr, modules=module, cse=True)
