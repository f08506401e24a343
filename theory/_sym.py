"""Small sympy helpers shared by the derivations: Gaussian moments (derived by integration),
expectations of polynomials under a Gaussian, exact zero checks and stable lambdification."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import sympy as sp
from sympy.codegen.rewriting import optimize, optims_c99

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
def normal_moment(k: int) -> SymLike:
    """E[Z^k] for Z ~ N(0, 1), by integrating against the standard normal density."""
    phi = sp.exp(-(_z**2) / 2) / sp.sqrt(2 * sp.pi)
    return sp.simplify(sp.integrate(_z**k * phi, (_z, -sp.oo, sp.oo)))


def gaussian_expectation(expr: SymLike, var: sp.Symbol, mean: SymLike, variance: SymLike) -> SymLike:
    """E[expr] for var ~ N(mean, variance), where expr is a polynomial in var.

    Substitutes var = mean + sqrt(variance) Z, expands in Z and replaces Z^k by its moment.
    """
    w = sp.Symbol("_w_gauss", real=True)
    poly = sp.Poly(sp.expand(expr.subs(var, mean + sp.sqrt(variance) * w)), w)
    return sp.expand(sum(c * normal_moment(m[0]) for m, c in zip(poly.monoms(), poly.coeffs(), strict=True)))


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


def stable(expr: SymLike) -> SymLike:
    """Rewrite exp(x) − 1 → expm1(x), log(1 + x) → log1p(x) etc. for accurate floating point."""
    return optimize(expr, optims_c99)


def lambdify(args: Sequence[sp.Symbol], expr: SymLike, module: str = "numpy", *, rewrite: bool = True) -> Callable:
    """``sympy.lambdify`` of ``expr`` (its numerically stable form when ``rewrite``; the rewrite is
    slow on large expressions, which are instead written in terms of small stable pieces);
    module "numpy" or "jax"."""
    if module not in ("numpy", "jax"):
        raise ValueError(f"module must be 'numpy' or 'jax'; got {module!r}.")
    if rewrite and sp.count_ops(expr) <= 80:
        expr = stable(expr)
    return sp.lambdify(list(args), expr, modules=module, cse=True)
