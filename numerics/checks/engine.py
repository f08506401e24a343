"""The shared Monte-Carlo / quadrature engine of the checks, and the result record.

Every check of :mod:`numerics.checks` returns a :class:`CheckResult`: the two sides of a bound or
identity, their gap, the Monte-Carlo standard error of the gap, and whether it *holds*:

* ``kind="identity"``:  holds when |lhs − rhs| ≤ 3·SE + atol;
* ``kind="inequality"`` (always written lhs ≤ rhs, gap = rhs − lhs): holds when the inequality is
  not violated beyond 3 SE, gap ≥ −3·SE − atol. ``significant`` says whether it holds *strictly*
  beyond 3 SE (gap > 3·SE + atol); tight bounds (equality cases) hold but are not significant.

``atol`` is a deterministic tolerance for quadrature/ODE error only (recorded in ``settings``);
closed-form checks have SE = 0.

Time integrals. Every g²-weighted time integral is done by Gauss–Legendre quadrature in the
log-SNR variable λ = log SNR(t), because g²/σ² = −dλ/dt (THEORY.md Eq. 1.1):

    ∫_{t0}^{t1} g(t)² F(t) dt = ∫_{λ(t1)}^{λ(t0)} σ²_{t(λ)} F(t(λ)) dλ,

which removes the 1/t blow-up of g²/σ² at small t (VP, sub-VP, VE-exact) and puts the nodes where
the integrands vary (they are smooth, sigmoid-like functions of λ). Plain dt-integrals use the
weight σ²/g² on the same nodes. The interval [0, t0] (where λ = ∞), when wanted, is added by plain
Gauss–Legendre in t (g² and the integrands are bounded there).

Monte Carlo over the data/noise uses *per-path quadrature*: each sample i carries a datum x₀ᵢ
and noises εᵢⱼ, independent across the quadrature nodes t_j, and the time integral of
x_t = α_t x₀ᵢ + σ_t εᵢⱼ is done by quadrature. This gives i.i.d. per-sample values whose mean is
the exact double integral (only the marginal law of x_t at each t matters), with far less variance
than one noise per path or random times. The SE is the sample standard deviation over √N. Comparisons of two estimates of the
same quantity use the *same* (x₀ᵢ, εᵢ) (common random numbers) and the SE of the paired difference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from numerics.sde import SDE

__all__ = [
    "CheckResult",
    "worst",
    "identity",
    "inequality",
    "demonstration",
    "mc_mean",
    "check_n_samples",
    "paired",
    "paired_ratio",
    "gauss_legendre",
    "TimeGrid",
    "time_grid",
    "divergence",
    "diffused_log_prob",
]

Kind = Literal["identity", "inequality"]


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One numeric check of a bound or identity (see the module docstring for ``holds``)."""

    name: str
    paper: str
    equation: str
    lhs: float
    rhs: float
    gap: float
    stderr: float
    holds: bool
    kind: Kind
    significant: bool = False
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["settings"] = {k: _jsonable(v) for k, v in self.settings.items()}
        return d

    def z_score(self) -> float:
        """gap / SE (inf when SE = 0 and gap ≠ 0)."""
        if self.stderr > 0:
            return self.gap / self.stderr
        return 0.0 if self.gap == 0 else math.copysign(math.inf, self.gap)


def _jsonable(v):
    if isinstance(v, (np.generic, jnp.ndarray, np.ndarray)):
        a = np.asarray(v)
        return a.item() if a.ndim == 0 else a.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(u) for u in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(u) for k, u in v.items()}
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return repr(v)


def worst(errors) -> float:
    """The largest of ``errors``, NaN if any is NaN (Python's ``max`` drops a NaN that is not first,
    which would let a non-finite error pass an identity check)."""
    return float(np.max(np.asarray(errors, dtype=float)))


def identity(
    name: str, paper: str, equation: str, lhs, rhs, stderr=0.0, *, atol: float = 0.0, settings=None
) -> CheckResult:
    """Record of an identity lhs = rhs; ``stderr`` is the SE of lhs − rhs (paired if CRN)."""
    lhs, rhs, se = float(lhs), float(rhs), float(stderr)
    gap = lhs - rhs
    holds = bool(np.isfinite(gap) and abs(gap) <= 3.0 * se + atol)
    s = dict(settings or {})
    s.setdefault("atol", atol)
    return CheckResult(name, paper, equation, lhs, rhs, gap, se, holds, "identity", False, s)


def inequality(
    name: str, paper: str, equation: str, lhs, rhs, stderr=0.0, *, atol: float = 0.0, settings=None
) -> CheckResult:
    """Record of an inequality lhs ≤ rhs; gap = rhs − lhs, ``stderr`` its SE."""
    lhs, rhs, se = float(lhs), float(rhs), float(stderr)
    gap = rhs - lhs
    holds = bool(np.isfinite(gap) and gap >= -3.0 * se - atol)
    significant = bool(np.isfinite(gap) and gap > 3.0 * se + atol)
    s = dict(settings or {})
    s.setdefault("atol", atol)
    return CheckResult(name, paper, equation, lhs, rhs, gap, se, holds, "inequality", significant, s)


def demonstration(result: CheckResult, statement: str) -> CheckResult:
    """Turn an :func:`inequality` record lhs ≤ rhs into a *demonstration* that it holds strictly.

    Used where a paper's bound is shown NOT to apply to some object (e.g. Song+21 Thm 2, a bound on
    the SDE model's NLL, applied to the ODE model's NLL, Lu+22): the record is written so that
    lhs ≤ rhs is the *violation* of that bound, and ``holds`` is True exactly when the violation is
    significant, rhs − lhs > 3·SE + atol (``holds == significant``). ``statement`` says in words what
    a success demonstrates; it goes to ``settings["demonstration"]`` and the report marks the row.
    """
    if result.kind != "inequality":
        raise ValueError("demonstration() takes an inequality record.")
    s = dict(result.settings)
    s["demonstration"] = statement
    s["semantics"] = ("demonstration: holds=True means lhs < rhs beyond 3 SE (the violation of the "
                      "named bound is shown); holds=False means the demonstration failed, not a bug")
    return dataclasses.replace(result, holds=result.significant, settings=s)


# --- Monte-Carlo means ------------------------------------------------------------------------


def mc_mean(values) -> tuple[float, float]:
    """(mean, standard error) of i.i.d. per-sample values (a 1-D array)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    check_n_samples(v.size)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))


def paired(a, b) -> tuple[float, float, float]:
    """(mean a, mean b, SE of mean(a − b)) for per-sample values on common random numbers."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    return float(a.mean()), float(b.mean()), mc_mean(a - b)[1]


def paired_ratio(a, b, offset: float = 0.0) -> tuple[float, float]:
    """(r, SE) of r = (mean a − c)/(mean b − c), ``c`` = ``offset`` held fixed, for per-sample values
    a, b on common random numbers: the delta method, SE = SE of the mean of the linearised
    influence (a − r b)/(mean b − c), so a positive correlation of a and b narrows it. The
    uncertainty of ``c`` itself is the caller's to add."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    den = b.mean() - offset
    r = (a.mean() - offset) / den
    return float(r), mc_mean((a - r * b) / den)[1]


# --- quadrature -------------------------------------------------------------------------------


def gauss_legendre(a: float, b: float, n_panels: int, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Composite Gauss–Legendre nodes and weights on [a, b] (numpy float64)."""
    x, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(a, b, n_panels + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    nodes = 0.5 * (hi - lo) * x[None, :] + 0.5 * (hi + lo)
    weights = 0.5 * (hi - lo) * w[None, :]
    return nodes.reshape(-1), weights.reshape(-1)


@dataclasses.dataclass(frozen=True)
class TimeGrid:
    """Quadrature nodes in t with two weight vectors:

    ``w_g2``: Σ_j w_g2[j] F(t_j) ≈ ∫ g(t)² F(t) dt;   ``w_dt``: Σ_j w_dt[j] F(t_j) ≈ ∫ F(t) dt.
    """

    t: np.ndarray
    w_g2: np.ndarray
    w_dt: np.ndarray
    t0: float
    t1: float

    @property
    def n(self) -> int:
        return self.t.size


def time_grid(
    sde: SDE,
    t0: float,
    t1: float | None = None,
    *,
    n_panels: int = 8,
    order: int = 12,
    origin_nodes: int = 8,
) -> TimeGrid:
    """Gauss–Legendre grid (``n_panels`` × ``order`` nodes) in log-SNR on [t0, t1].

    When ``t0 == 0`` and log SNR(0) = ∞ (VP, sub-VP, VE exact), [0, t1] is split at
    t_split = the SDE's ``t_min`` (1e-5 if that is 0): λ-quadrature on [t_split, t1] and
    ``origin_nodes`` Gauss–Legendre nodes in t on [0, t_split]. When log SNR(0) is finite (VE
    score_sde convention, VDM's γ) the λ-grid covers [0, t1] directly.
    """
    t1 = float(sde.T if t1 is None else t1)
    t0 = float(t0)
    if not (0.0 <= t0 < t1 <= float(sde.T) + 1e-12):
        raise ValueError(f"need 0 <= t0 < t1 <= T; got t0={t0}, t1={t1}, T={sde.T}.")
    ts, wg, wd = [], [], []
    lam_start = float(sde.log_snr(jnp.asarray(t0))) if t0 > 0 else float(sde.log_snr(jnp.asarray(0.0)))
    if t0 == 0.0 and not np.isfinite(lam_start):
        split = float(sde.t_min) if sde.t_min > 0 else 1e-5
        split = min(split, 0.5 * t1)
        tn, tw = gauss_legendre(0.0, split, 1, origin_nodes)
        g2 = np.asarray(sde.diffusion_sq(jnp.asarray(tn)))
        ts.append(tn)
        wg.append(tw * g2)
        wd.append(tw)
        t0_lam = split
    else:
        t0_lam = t0
    lam_hi = float(sde.log_snr(jnp.asarray(t0_lam)))
    lam_lo = float(sde.log_snr(jnp.asarray(t1)))
    ln, lw = gauss_legendre(lam_lo, lam_hi, n_panels, order)
    tn = np.asarray(sde.inverse_log_snr(jnp.asarray(ln)), dtype=np.float64)
    tn = np.clip(tn, t0_lam, t1)
    var = np.asarray(sde.variance(jnp.asarray(tn)))
    g2 = np.asarray(sde.diffusion_sq(jnp.asarray(tn)))
    ts.append(tn)
    wg.append(lw * var)
    wd.append(lw * var / g2)
    return TimeGrid(np.concatenate(ts), np.concatenate(wg), np.concatenate(wd), t0, t1)


def divergence(fn: Callable, x, t):
    """∇·fn(x, t) for ONE point x of shape (D,), by the exact Jacobian trace (D ≤ ~100)."""
    return jnp.trace(jax.jacfwd(lambda y: fn(y, t))(x))


@jax.jit
def diffused_log_prob(q, alpha, var, x):
    """log q_t(x) of a mixture q diffused to a time with coefficients (α_t, σ_t²), compiled once per shape."""
    return q._diffuse(alpha, var).log_prob(x)


def key_from_seed(seed: int):
    return jax.random.PRNGKey(int(seed) % (2**31))


def check_n_samples(n, name: str = "n_samples") -> int:
    """``n`` as an int, or ValueError: a Monte-Carlo mean needs at least 2 samples for its standard error."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name} must be an integer number of Monte-Carlo samples (>= 2); got {n!r}.")
    if n < 2:
        raise ValueError(f"{name} must be at least 2 (a standard error needs two samples; the report's "
                         f"default is 1024); got {n}.")
    return int(n)


def path_noise(key, n: int, n_nodes: int, dim: int):
    """Independent N(0, I) noise per path and node: (n, n_nodes, dim); ``n`` (the checks'
    ``n_samples``) must be at least 2."""
    check_n_samples(n)
    return jax.random.normal(key, (n, n_nodes, dim), dtype=jnp.float64)


# --- per-path evaluation ---------------------------------------------------------------------


def grid_coeffs(sde: SDE, t):
    """(α_t, σ_t, g²(t), f(t)) at the nodes ``t`` as float64 jax arrays."""
    t = jnp.asarray(t)
    return sde.mean_coeff(t), sde.std(t), sde.diffusion_sq(t), sde.drift_coeff(t)


def _eval_on_paths_impl(integrand, args, x0, eps, t, alpha, sigma):
    per_node_noise = eps.ndim == 3

    def per_node(tj, aj, sj, ej):
        x_t = aj * x0 + sj * ej  # (N, D)
        return jax.vmap(lambda xt, x0i, ei: integrand(args, xt, tj, x0i, ei, aj, sj))(x_t, x0, ej)

    if per_node_noise:
        return jax.vmap(per_node, in_axes=(0, 0, 0, 1), out_axes=1)(t, alpha, sigma, eps)
    return jax.vmap(per_node, in_axes=(0, 0, 0, None), out_axes=1)(t, alpha, sigma, eps)  # (N, n_nodes, ...)


_eval_on_paths_jit = eqx.filter_jit(_eval_on_paths_impl)


def eval_on_paths(integrand: Callable, args, x0, eps, t, alpha, sigma):
    """Values ``integrand(args, x_t, t, x0, eps, α_t, σ_t)`` on every path i and node j: (N, n_nodes).

    x_t = α_t x0ᵢ + σ_t εᵢ, with ``eps`` of shape (N, D) (one noise per path, all nodes) or
    (N, n_nodes, D) (independent noise per node: the sum over nodes then averages the noise, which
    is valid because only the marginal law of x_t at each t enters). ``integrand`` must be a module-level function (it is a static jit
    argument: one compilation per integrand and shapes); ``args`` is a PyTree (mixtures, models).
    """
    return _eval_on_paths_jit(integrand, args, jnp.asarray(x0), jnp.asarray(eps), jnp.asarray(t),
                              jnp.asarray(alpha), jnp.asarray(sigma))
