"""Linear SDEs  dx = f(t) x dt + g(t) dw  and their exact Gaussian transition kernels.

One abstract class, :class:`SDE`; each concrete SDE fills in only its schedule
(THEORY.md §1). Every quantity is elementwise in ``t`` (a scalar or an array) and is
written in a numerically careful form at small ``t`` (``expm1``/``log1p``/softplus).

The kernel from time 0 is q_{0t}(x_t | x_0) = N(α_t x_0, σ_t² I) with

    α_t = exp(∫_0^t f),   σ_t² = α_t² ∫_0^t g²/α_u² du,

i.e. the solution of dα/dt = f α, dσ²/dt = 2 f σ² + g² with α_0 = 1, σ_0 = 0
(Song et al. 2021, Eq. 5; THEORY.md §1.1). The identity g²/σ² = −d log SNR/dt (THEORY.md
Eq. 1.1) links all four papers and gives the importance-sampling density of t.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import ClassVar, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "LogSNRSDE",
    "LinearGamma",
    "CosineGamma",
    "LogitGamma",
    "LiYanSDE",
    "bisect_increasing",
    "check_time",
]

Time = Float[ArrayLike, "*t"]


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def check_time(sde: "SDE", t, *, name: str = "t", lower: float | None = None):
    """Raise ``ValueError`` when ``t`` lies outside ``[lower, sde.T]`` (``lower`` defaults to 0).

    Concrete values are checked eagerly in Python; traced values are checked at run time
    with :func:`equinox.error_if`, so a bad ``t`` inside ``jit`` raises too.
    """
    lo = 0.0 if lower is None else float(lower)
    hi = float(sde.T)
    msg = (
        f"{name} must lie in [{lo:g}, {hi:g}] for {type(sde).__name__}; got values outside. "
        f"Clip or rescale {name} to the SDE's time range."
    )
    if _is_concrete(t):
        # numpy, not jnp: under an outer jit a jnp op on a concrete value would be staged (a tracer)
        arr = np.asarray(t, dtype=float)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} contains NaN or inf; pass finite times in [{lo:g}, {hi:g}].")
        if np.any(arr < lo) or np.any(arr > hi):
            raise ValueError(msg + f" (min {arr.min():g}, max {arr.max():g})")
        return t
    bad = (t < lo) | (t > hi) | ~jnp.isfinite(t)
    return eqx.error_if(t, bad, msg)


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number; got {value!r}.")
    return value


Param = Float[ArrayLike, ""]


def _schedule_params(**bounds) -> dict[str, Array]:
    """The schedule parameters of an SDE (``name=(value, strictly_above)`` in order): each a finite
    positive scalar, and at least its predecessor (``strictly_above``: strictly greater).

    Stored as weakly typed JAX scalars, so that they are traced leaves of the SDE's PyTree: an SDE
    with other parameter values reuses the compiled likelihood, check or loss (a sweep over β_max
    does not recompile; ~0.7 s per value before), parameters can be differentiated, and a weak
    float64 scalar never promotes a float32 computation (training). A traced value (an SDE built
    inside ``jit``) is taken as is: the checks need concrete values.
    """
    out, prev = {}, None
    for name, (value, strict) in bounds.items():
        if isinstance(value, jax.core.Tracer):
            out[name] = value
        else:
            v = _check_positive(name, value)
            if prev is not None and not isinstance(out[prev], jax.core.Tracer):
                lo = float(out[prev])
                if v < lo or (strict and v == lo):
                    rel = ">" if strict else ">="
                    raise ValueError(f"{name} ({v:g}) must be {rel} {prev} ({lo:g}).")
            out[name] = jnp.asarray(v)  # a Python float → weakly typed
        prev = name
    return out


class SDE(eqx.Module):
    """A linear SDE dx = f(t) x dt + g(t) dw on [0, T] with a Gaussian prior N(0, prior_std² I).

    Subclasses implement :meth:`drift_coeff`, :meth:`diffusion_sq`, :meth:`log_mean_coeff`,
    :meth:`variance` and :meth:`prior_std`; everything else is derived. ``t_min`` is the
    smallest time used by likelihoods and training (the ε of Song et al. 2021, §4.3).
    """

    t_min: eqx.AbstractVar[float]
    T: eqx.AbstractVar[float]

    # The schedule parameters are JAX scalars (traced leaves, see _schedule_params); an SDE still
    # prints its values and, when they are concrete, hashes like a frozen dataclass of floats (a
    # dict key or cache key, as before they were traced).
    def _field_values(self) -> list:
        def value(v):
            return float(v) if isinstance(v, jax.Array) and v.ndim == 0 and _is_concrete(v) else v

        return [(f.name, value(getattr(self, f.name))) for f in dataclasses.fields(self)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._field_values())})"

    def __hash__(self) -> int:
        return hash((type(self), *self._field_values()))

    # --- schedule: what a concrete SDE fills in -------------------------------------
    @abc.abstractmethod
    def drift_coeff(self, t: Time) -> Float[Array, "*t"]:
        """f(t) of the drift f(t) x."""

    @abc.abstractmethod
    def diffusion_sq(self, t: Time) -> Float[Array, "*t"]:
        """g(t)², the squared diffusion coefficient (Song et al.'s likelihood weighting)."""

    @abc.abstractmethod
    def log_mean_coeff(self, t: Time) -> Float[Array, "*t"]:
        """log α_t = ∫_0^t f(u) du."""

    @abc.abstractmethod
    def variance(self, t: Time) -> Float[Array, "*t"]:
        """σ_t², the variance of the transition kernel from time 0."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float | Float[Array, ""]:
        """Standard deviation of the isotropic Gaussian prior π at time T."""

    def _t(self, t: Time) -> Array:
        """``t`` as a floating array for the schedule methods. A concrete ``t`` outside [0, T] raises
        (:func:`check_time`, in numpy: ~2 µs); a traced one is not checked here, because the schedule
        runs inside solver loops — the public entry points check their times instead."""
        if _is_concrete(t):
            check_time(self, t)
        return _time(t)

    # --- derived quantities ----------------------------------------------------------
    def diffusion(self, t: Time) -> Float[Array, "*t"]:
        """g(t)."""
        return jnp.sqrt(self.diffusion_sq(t))

    def mean_coeff(self, t: Time) -> Float[Array, "*t"]:
        """α_t = exp(∫_0^t f)."""
        return jnp.exp(self.log_mean_coeff(t))

    def std(self, t: Time) -> Float[Array, "*t"]:
        """σ_t."""
        return jnp.sqrt(self.variance(t))

    def log_snr(self, t: Time) -> Float[Array, "*t"]:
        """log SNR(t) = log α_t² − log σ_t² (VDM's −γ(t))."""
        return 2.0 * self.log_mean_coeff(t) - jnp.log(self.variance(t))

    def log_snr_derivative(self, t: Time) -> Float[Array, "*t"]:
        """d log SNR / dt = −g²/σ² (THEORY.md Eq. 1.1)."""
        return -self.diffusion_sq(t) / self.variance(t)

    def marginal_params(self, t: Time) -> tuple[Float[Array, "*t"], Float[Array, "*t"]]:
        """(α_t, σ_t)."""
        return self.mean_coeff(t), self.std(t)

    def inverse_log_snr(self, log_snr: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """t such that log SNR(t) = ``log_snr`` (closed form where one exists, else bisection on [0, T])."""
        return bisect_increasing(lambda t: -self.log_snr(t), -jnp.asarray(log_snr), 0.0, self.T)

    # --- importance sampling of t (Song et al. 2021, §5; THEORY.md §2.6) ------------
    def importance_normaliser(self, t_min: float | None = None) -> Float[Array, ""]:
        """Z = log SNR(t_min) − log SNR(T) = ∫_{t_min}^T g²/σ² dt."""
        t0 = self.t_min if t_min is None else t_min
        return self.log_snr(jnp.asarray(t0)) - self.log_snr(jnp.asarray(self.T))

    def importance_pdf(self, t: Time, t_min: float | None = None) -> Float[Array, "*t"]:
        """The density p(t) = (g²/σ²)/Z = −(d log SNR/dt)/Z on [t_min, T] (THEORY.md Eq. 1.1), per unit t."""
        return -self.log_snr_derivative(t) / self.importance_normaliser(t_min)

    def importance_cdf(self, t: Time, t_min: float | None = None) -> Float[Array, "*t"]:
        """CDF of p(t) ∝ g(t)²/σ_t² on [t_min, T]: (log SNR(t_min) − log SNR(t)) / Z."""
        t0 = self.t_min if t_min is None else t_min
        lam0 = self.log_snr(jnp.asarray(t0))
        return (lam0 - self.log_snr(t)) / self.importance_normaliser(t0)

    def importance_inverse_cdf(self, u: Float[ArrayLike, "*t"], t_min: float | None = None):
        """Exact inverse of :meth:`importance_cdf`: log SNR is uniform under p(t)."""
        t0 = self.t_min if t_min is None else t_min
        lam0 = self.log_snr(jnp.asarray(t0))
        t = self.inverse_log_snr(lam0 - jnp.asarray(u) * self.importance_normaliser(t0))
        return jnp.clip(t, t0, self.T)  # rounding at u = 0 or 1 (VE: 1 + 2e-16) must not leave [t_min, T]

    def importance_sample_t(self, key: PRNGKeyArray, shape=(), t_min: float | None = None, dtype=None):
        """Draw t ~ p(t) ∝ g²/σ² on [t_min, T] by the exact inverse CDF."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        u = jax.random.uniform(key, shape, dtype=dtype)
        return self.importance_inverse_cdf(u, t_min).astype(dtype)

    # --- prior ------------------------------------------------------------------------
    def prior_log_prob(self, x: Float[Array, "*event"]) -> Float[Array, ""]:
        """log π(x) for ONE sample (summed over all its axes); vmap for a batch."""
        s = self.prior_std
        d = x.size
        return -0.5 * jnp.sum(jnp.square(x)) / s**2 - 0.5 * d * jnp.log(2 * jnp.pi * s**2)

    def prior_sample(self, key: PRNGKeyArray, shape, dtype=None) -> Array:
        """Draw from π = N(0, prior_std² I) with the given full shape."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        return self.prior_std * jax.random.normal(key, shape, dtype=dtype)


def bisect_increasing(fn: Callable, target: Float[ArrayLike, "*v"], lo: float, hi: float,
                      n_iter: int = 200) -> Float[Array, "*v"]:
    """t ∈ [lo, hi] with ``fn(t) = target`` for an increasing ``fn``, elementwise by ``n_iter`` halvings
    (clamped to lo or hi when ``target`` lies outside [fn(lo), fn(hi)]). The one bisection of the
    package: the inverse log SNR of an SDE without a closed form and VDM's learned γ."""
    target = jnp.asarray(target)
    a = jnp.full(target.shape, lo, jnp.result_type(target.dtype, float))
    b = jnp.full_like(a, hi)

    def body(_, bounds):
        a, b = bounds
        mid = 0.5 * (a + b)
        above = fn(mid) > target
        return jnp.where(above, a, mid), jnp.where(above, mid, b)

    a, b = jax.lax.fori_loop(0, n_iter, body, (a, b))
    return 0.5 * (a + b)


def _time(t) -> Array:
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.result_type(float))


def _t_from_B(B, beta_min, beta_max):
    """Invert B(t) = β_min t + ½(β_max − β_min) t² stably (no cancellation at small B)."""
    return 2.0 * B / (beta_min + jnp.sqrt(beta_min**2 + 2.0 * (beta_max - beta_min) * B))


class VPSDE(SDE):
    """Variance-preserving SDE: f = −β(t)/2, g = √β(t), β(t) = β_min + t (β_max − β_min).

    Song et al. 2021 (score_sde's VP SDE; THEORY.md §1.2): α_t = e^{−B/2}, σ_t² = −expm1(−B),
    B(t) = ∫_0^t β. Prior N(0, I).
    """

    beta_min: Param  # traced (see _schedule_params): another value does not recompile
    beta_max: Param
    t_min: float = eqx.field(static=True)
    T: float = eqx.field(static=True)

    def __init__(self, beta_min: Param = 0.1, beta_max: Param = 20.0, *, t_min: float = 1e-5, T: float = 1.0):
        p = _schedule_params(beta_min=(beta_min, False), beta_max=(beta_max, False))
        self.beta_min, self.beta_max = p["beta_min"], p["beta_max"]
        self.t_min, self.T = _check_range(t_min, T)

    def beta(self, t):
        return self.beta_min + self._t(t) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t):
        """B(t) = ∫_0^t β(u) du."""
        t = self._t(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def drift_coeff(self, t):
        return -0.5 * self.beta(t)

    def diffusion_sq(self, t):
        return self.beta(t)

    def log_mean_coeff(self, t):
        return -0.5 * self.integrated_beta(t)

    def variance(self, t):
        return -jnp.expm1(-self.integrated_beta(t))

    def log_snr(self, t):
        return -jnp.log(jnp.expm1(self.integrated_beta(t)))

    def inverse_log_snr(self, log_snr):
        B = jax.nn.softplus(-jnp.asarray(log_snr))  # expm1(B) = e^{−λ}
        return _t_from_B(B, self.beta_min, self.beta_max)

    @property
    def prior_std(self) -> float:
        return 1.0


class SubVPSDE(VPSDE):
    """sub-VP SDE (Song et al. 2021): f = −β/2, g² = β (1 − e^{−2B}); α_t = e^{−B/2}, σ_t = 1 − e^{−B}.

    Default t_min = 1e-2 as in score_flow's sub-VP configs (THEORY.md §1.2).
    """

    def __init__(self, beta_min: Param = 0.1, beta_max: Param = 20.0, *, t_min: float = 1e-2, T: float = 1.0):
        super().__init__(beta_min, beta_max, t_min=t_min, T=T)

    def diffusion_sq(self, t):
        return self.beta(t) * (-jnp.expm1(-2.0 * self.integrated_beta(t)))

    def variance(self, t):
        return jnp.square(jnp.expm1(-self.integrated_beta(t)))

    def log_snr(self, t):
        B = self.integrated_beta(t)
        return -B - 2.0 * jnp.log(-jnp.expm1(-B))

    def inverse_log_snr(self, log_snr):
        k = jnp.exp(-jnp.asarray(log_snr))  # 2 log expm1(B) − B = −λ ⇒ k = e^{−λ}
        B = jnp.log1p(0.5 * k + jnp.sqrt(k * (1.0 + 0.25 * k)))
        return _t_from_B(B, self.beta_min, self.beta_max)


class VESDE(SDE):
    """Variance-exploding SDE: f = 0, g = σ(t) √(2 log r), σ(t) = σ_min r^t, r = σ_max/σ_min.

    ``kernel="exact"`` (default): the exact kernel from t = 0, σ_t² = σ_min² expm1(2 t log r).
    ``kernel="score_sde"``: the public code's convention σ_t = σ_min r^t, which treats the data
    as already convolved with N(0, σ_min² I) (THEORY.md §1.2, "VE kernel caveat"); use it to
    reproduce the papers' numbers. Prior N(0, σ_max² I).
    """

    sigma_min: Param  # traced (see _schedule_params): another value does not recompile
    sigma_max: Param
    kernel: Literal["exact", "score_sde"] = eqx.field(static=True)
    t_min: float = eqx.field(static=True)
    T: float = eqx.field(static=True)

    def __init__(
        self,
        sigma_min: Param = 0.01,
        sigma_max: Param = 50.0,
        *,
        kernel: Literal["exact", "score_sde"] = "exact",
        t_min: float = 1e-5,
        T: float = 1.0,
    ):
        p = _schedule_params(sigma_min=(sigma_min, False), sigma_max=(sigma_max, True))
        self.sigma_min, self.sigma_max = p["sigma_min"], p["sigma_max"]
        if kernel not in ("exact", "score_sde"):
            raise ValueError(f"kernel must be 'exact' or 'score_sde'; got {kernel!r}.")
        self.kernel = kernel
        self.t_min, self.T = _check_range(t_min, T)

    @property
    def log_ratio(self) -> Float[Array, ""]:
        """log r = log(σ_max/σ_min)."""
        return jnp.log(self.sigma_max / self.sigma_min)

    def sigma(self, t):
        """σ(t) = σ_min r^t (the noise level of the code convention)."""
        return self.sigma_min * jnp.exp(self._t(t) * self.log_ratio)

    def drift_coeff(self, t):
        return jnp.zeros_like(self._t(t))

    def diffusion_sq(self, t):
        return jnp.square(self.sigma(t)) * (2.0 * self.log_ratio)

    def log_mean_coeff(self, t):
        return jnp.zeros_like(self._t(t))

    def variance(self, t):
        t = self._t(t)
        if self.kernel == "exact":
            return self.sigma_min**2 * jnp.expm1(2.0 * t * self.log_ratio)
        return jnp.square(self.sigma(t))

    def log_snr(self, t):
        t = self._t(t)
        if self.kernel == "exact":
            return -(2.0 * jnp.log(self.sigma_min) + jnp.log(jnp.expm1(2.0 * t * self.log_ratio)))
        return -2.0 * (jnp.log(self.sigma_min) + t * self.log_ratio)

    def inverse_log_snr(self, log_snr):
        lam = jnp.asarray(log_snr)
        if self.kernel == "exact":
            return jnp.log1p(jnp.exp(-lam) / self.sigma_min**2) / (2.0 * self.log_ratio)
        return (-0.5 * lam - jnp.log(self.sigma_min)) / self.log_ratio

    @property
    def prior_std(self) -> Float[Array, ""]:
        return self.sigma_max


# --- VDM: variance-preserving SDE from a monotone γ(t) = −log SNR(t) --------------------


class LinearGamma(eqx.Module):
    """γ(t) = γ_min + (γ_max − γ_min) t (VDM's fixed linear schedule; Kingma et al. 2021 §3.4)."""

    gamma_min: float = -13.3
    gamma_max: float = 5.0

    def __call__(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * _time(t)

    def inverse(self, gamma):
        return (jnp.asarray(gamma) - self.gamma_min) / (self.gamma_max - self.gamma_min)


class CosineGamma(eqx.Module):
    """γ(t) = γ_min + (γ_max − γ_min)(1 − cos πt)/2: a non-linear schedule with the same endpoints
    as :class:`LinearGamma`, for checks of VDM's schedule invariance (Kingma et al. 2021 §5.1)."""

    gamma_min: float = -13.3
    gamma_max: float = 5.0
    domain_end: ClassVar[float] = 1.0  # γ(1) = γ_max; beyond it γ decreases

    def __call__(self, t):
        return self.gamma_min + (self.gamma_max - self.gamma_min) * 0.5 * (1.0 - jnp.cos(jnp.pi * _time(t)))

    def inverse(self, gamma):
        h = (jnp.asarray(gamma) - self.gamma_min) / (self.gamma_max - self.gamma_min)
        return jnp.arccos(jnp.clip(1.0 - 2.0 * h, -1.0, 1.0)) / jnp.pi


class LogitGamma(eqx.Module):
    """γ(t) = log(t/(1 − t)): σ_t² = t, α_t² = 1 − t — the forward process of Li & Yan 2024 (§2;
    THEORY.md §5.1), in which t is the noise variance and DDPM's chain is embedded at t_k = 1 − ᾱ_k."""

    def __call__(self, t):
        t = _time(t)
        return jnp.log(t) - jnp.log1p(-t)

    def inverse(self, gamma):
        return jax.nn.sigmoid(jnp.asarray(gamma))


def _gamma_and_slope(gamma: Callable, t):
    """(γ(t), γ'(t)) by forward-mode autodiff."""
    return jax.jvp(gamma, (t,), (jnp.ones_like(t),))


@eqx.filter_jit
def _gamma_slopes(gamma: Callable, ts: Float[ArrayLike, " n"]) -> Float[Array, " n"]:
    """γ'(t) on a grid (one compiled call: the eager vmap-jvp took ~1 s)."""
    return jax.vmap(lambda t: _gamma_and_slope(gamma, t)[1])(jnp.asarray(ts))


class LogSNRSDE(SDE):
    """Variance-preserving SDE defined by a monotone increasing γ(t) = −log SNR(t) (VDM).

    Kingma et al. 2021, Eq. 3–4: σ_t² = sigmoid(γ), α_t² = sigmoid(−γ). The matching linear SDE
    has f = −½ σ_t² γ'(t) and g² = σ_t² γ'(t) (THEORY.md §4.7), so VDM's schedules — fixed or
    learned (any PyTree callable ``gamma``, e.g. an equinox network with monotone layers) —
    plug into the same likelihood and loss code. γ' is taken by forward-mode autodiff.
    If ``gamma`` has an ``inverse`` method it is used by :meth:`inverse_log_snr`; otherwise
    bisection. As in VDM, the process starts from q(z_0 | x) = N(α_0 x, σ_0²) with σ_0² = sigmoid(γ(0))
    > 0 (γ_min = −13.3: α_0 ≈ 1 − 8·10⁻⁷), not from x itself: ``mean_coeff``/``variance`` are VDM's
    α_t, σ_t² of q(z_t | x), and z_0 equals x only in the limit γ(0) → −∞ (Li & Yan's logit γ).
    """

    gamma: Callable
    t_min: float = eqx.field(static=True)
    T: float = eqx.field(static=True)

    def __init__(self, gamma: Callable | None = None, *, t_min: float = 0.0, T: float = 1.0):
        self.gamma = LinearGamma() if gamma is None else gamma
        self.t_min, self.T = _check_range(t_min, T, allow_zero=True)
        domain_end = getattr(self.gamma, "domain_end", None)
        if domain_end is not None and self.T > domain_end:
            raise ValueError(
                f"T={self.T:g} lies beyond the end of {type(self.gamma).__name__}'s domain [0, {domain_end:g}] "
                f"(its endpoints γ(0) = gamma_min and γ({domain_end:g}) = gamma_max are where the schedule is "
                f"defined); use T ≤ {domain_end:g}, or rescale time."
            )
        self._check_increasing()

    def _check_increasing(self, n: int = 65) -> None:
        """γ must increase on [0, T] (log SNR decreasing): else g² = σ² γ' < 0 and the diffusion is
        NaN. γ' ≥ 0 everywhere and > 0 somewhere is checked on a grid of ``n`` times when γ is
        concrete (a γ with traced parameters, e.g. one initialised inside ``jit``, is not checked)."""
        ts = np.linspace(0.0, self.T, n)
        # float leaves (LinearGamma's endpoints) as arrays: traced, so new values do not recompile
        gamma = jax.tree.map(lambda leaf: np.asarray(leaf) if isinstance(leaf, float) else leaf, self.gamma)
        slopes = _gamma_slopes(gamma, ts)
        if not _is_concrete(slopes):
            return
        slopes = np.asarray(slopes)
        bad = ~(slopes >= 0)  # γ' = 0 at isolated points is allowed (CosineGamma at t = 0 and 1)
        if not bad.any() and not (slopes > 0).any():
            bad = slopes == 0
        if bad.any():
            t_bad = float(np.asarray(ts)[bad][0])
            raise ValueError(
                f"gamma must be increasing on [0, T] (γ = −log SNR; VDM's noise schedule); its "
                f"derivative is {float(slopes[bad][0]):g} at t = {t_bad:g}. Use a monotone γ, e.g. "
                "numerics.vdm.MonotoneGamma, or LinearGamma(gamma_min, gamma_max) with gamma_min < gamma_max."
            )

    def gamma_and_derivative(self, t):
        return _gamma_and_slope(self.gamma, self._t(t))

    def drift_coeff(self, t):
        g, dg = self.gamma_and_derivative(t)
        return -0.5 * jax.nn.sigmoid(g) * dg

    def diffusion_sq(self, t):
        g, dg = self.gamma_and_derivative(t)
        return jax.nn.sigmoid(g) * dg

    def log_mean_coeff(self, t):
        return -0.5 * jax.nn.softplus(self.gamma(self._t(t)))

    def variance(self, t):
        return jax.nn.sigmoid(self.gamma(self._t(t)))

    def log_snr(self, t):
        return -self.gamma(self._t(t))

    def log_snr_derivative(self, t):
        return -self.gamma_and_derivative(t)[1]

    def inverse_log_snr(self, log_snr):
        inverse = getattr(self.gamma, "inverse", None)
        if inverse is not None:
            return inverse(-jnp.asarray(log_snr))
        return super().inverse_log_snr(log_snr)

    @property
    def prior_std(self) -> float:
        return 1.0


def _check_range(t_min, T, allow_zero: bool = False) -> tuple[float, float]:
    t_min, T = float(t_min), float(T)
    if not (math.isfinite(t_min) and math.isfinite(T)):
        raise ValueError(f"t_min and T must be finite; got t_min={t_min}, T={T}.")
    if t_min < 0 or (t_min == 0 and not allow_zero):
        raise ValueError(f"t_min must be > 0 (the ε of Song et al.); got {t_min}.")
    if T <= t_min:
        raise ValueError(f"T must be > t_min; got T={T}, t_min={t_min}.")
    return t_min, T


class LiYanSDE(LogSNRSDE):
    """Li & Yan 2024: dX = −X/(2(1−t)) dt + dB/√(1−t), i.e. VP with β(t) = 1/(1 − t) (THEORY.md §5.1):
    α_t² = 1 − t, σ_t² = t, and X_1 ~ N(0, I) exactly. g² = 1/(1−t) is singular at t = 1, so the
    default T is 1 − 10⁻⁶."""

    def __init__(self, *, t_min: float = 1e-5, T: float = 1.0 - 1e-6):
        if not (0 < t_min < T < 1):
            raise ValueError(f"Li & Yan's SDE needs 0 < t_min < T < 1; got t_min={t_min}, T={T}.")
        super().__init__(LogitGamma(), t_min=t_min, T=T)

    # closed forms: through γ = logit t, f and g² at t = 0 would be 0·∞ = NaN (γ' = 1/(t(1−t)))
    def drift_coeff(self, t):
        return -0.5 / (1.0 - self._t(t))

    def diffusion_sq(self, t):
        return 1.0 / (1.0 - self._t(t))

    def log_mean_coeff(self, t):
        return 0.5 * jnp.log1p(-self._t(t))

    def variance(self, t):
        return self._t(t)
