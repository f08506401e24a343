"""Denoising score matching with the weightings of Song et al. 2021 — the one implementation.

Per example x_0, with t drawn on [t_min, T], ε ~ N(0, I) and x_t = α_t x_0 + σ_t ε, the
returned value is an unbiased single-sample estimate of

    J_DSM(θ; λ) = ½ ∫_{t_min}^T λ(t) E ‖s_θ(x_t, t) + ε/σ_t‖² dt        (Song et al. 2021, Eq. 7)

for the three settings of their Table 2 (THEORY.md §2.2, §2.6):

==============  ================  ==================================================
weighting        t drawn from      per-example value (ε̂ = −σ_t s_θ)
==============  ================  ==================================================
``"sigma2"``     U[t_min, T]       (T − t_min) · ½ ‖ε − ε̂‖²            (λ = σ_t²)
``"g2"``         U[t_min, T]       (T − t_min) · ½ (g²/σ²) ‖ε − ε̂‖²    (λ = g²)
``"g2_is"``      p(t) ∝ g²/σ²      Z · ½ ‖ε − ε̂‖²                      (λ = g², IS)
==============  ================  ==================================================

with Z = log SNR(t_min) − log SNR(T). The public code drops the constants (T − t_min) and Z;
keeping them makes the expectation *equal* J_DSM, so the same numbers serve the bounds of
numerics and the training loss (Adam is invariant to a constant scale). By THEORY.md Eq. 1.1,
½ (g²/σ²)‖ε − ε̂‖² is also VDM's continuous-time loss ½ γ'(t)‖ε − ε̂‖² (Kingma et al. 2021, Eq. 17).

Everything is dtype-generic: it computes in the dtype of ``x0`` (float64 in numerics, float32 or
bf16 in training).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from numerics.sde import SDE

__all__ = ["PARAMETERISATIONS", "WEIGHTINGS", "check_choice", "perturb", "sample_time", "time_weight", "dsm_loss", "dsm_loss_terms"]

Weighting = Literal["sigma2", "g2", "g2_is"]
Parameterisation = Literal["score", "eps"]
WEIGHTINGS: tuple[str, ...] = ("sigma2", "g2", "g2_is")
PARAMETERISATIONS: tuple[str, ...] = ("score", "eps")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """A ValueError "``name`` must be one of ``allowed``; got ``value``." unless ``value`` is one of
    them — the check of every string option of :mod:`numerics` (a typo must not pick another branch)."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}.")


@eqx.filter_jit
def _finite_normaliser(sde: SDE, t0: Array) -> Array:
    """Whether Z = log SNR(t0) − log SNR(T) (``sde.importance_normaliser``) is finite; t0 traced: no recompile."""
    return jnp.isfinite(sde.log_snr(t0) - sde.log_snr(jnp.asarray(sde.T, t0.dtype)))


def _resolve_t_min(sde: SDE, t_min: float | None, weighting: str) -> float:
    """The lower time limit (``sde.t_min`` unless overridden), checked as :func:`numerics.sde._check_range`
    checks an SDE's own: finite and 0 ≤ t_min < T. For the likelihood weightings ``"g2"``/``"g2_is"``
    also ∫_{t_min}^T g²/σ² dt = Z = log SNR(t_min) − log SNR(T) must be finite: it is the importance
    normaliser of ``"g2_is"`` and E_t of the ``"g2"`` weight, infinite where σ_{t_min} = 0 (the VP SDE
    at t_min = 0; Song et al. 2021 need t_min = ε > 0). Z is evaluated once per call, or at trace time
    inside ``jit`` (one small compiled scalar program, ~0.2 ms); for an SDE with traced parameters (an
    SDE passed as an argument of ``jit``, a learned schedule in training) that check is skipped."""
    t0 = float(sde.t_min if t_min is None else t_min)
    if not math.isfinite(t0):
        raise ValueError(f"t_min must be finite; got t_min={t0}.")
    if t0 < 0:
        raise ValueError(f"t_min must be ≥ 0 (the ε of Song et al.); got t_min={t0}.")
    if not sde.T > t0:
        raise ValueError(f"t_min must be < T (the SDE's end time); got t_min={t0}, T={sde.T}.")
    traced = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(sde))
    if weighting != "sigma2" and not traced:
        with jax.ensure_compile_time_eval():  # concrete inside a caller's jit too
            finite = _finite_normaliser(sde, np.asarray(t0, jnp.result_type(float)))
        if not bool(finite):
            raise ValueError(
                f"t_min={t0} gives a non-finite likelihood weight for weighting={weighting!r}: "
                "Z = log SNR(t_min) − log SNR(T) is not finite (σ = 0 at t_min). Use t_min > 0, e.g. "
                "the ε = 1e-5 of Song et al., or weighting='sigma2'."
            )
    return t0


def sample_time(
    sde: SDE, key: PRNGKeyArray, shape, weighting: Weighting, *, t_min: float | None = None, dtype=None
) -> Array:
    """t ~ U[t_min, T] for ``"sigma2"``/``"g2"``; t ~ p(t) ∝ g²/σ² (exact inverse CDF) for ``"g2_is"``."""
    check_choice("weighting", weighting, WEIGHTINGS)
    return _sample_time(sde, key, shape, weighting, _resolve_t_min(sde, t_min, weighting), dtype)


def _sample_time(sde: SDE, key: PRNGKeyArray, shape, weighting: str, t0: float, dtype) -> Array:
    """:func:`sample_time` for a checked weighting and lower limit ``t0``."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    if weighting == "g2_is":
        return sde.importance_sample_t(key, shape, t_min=t0, dtype=dtype)
    return jax.random.uniform(key, shape, dtype=dtype, minval=t0, maxval=sde.T)


def time_weight(sde: SDE, t, weighting: Weighting, *, t_min: float | None = None) -> Array:
    """The factor w(t) in the per-example value w(t) · ½‖ε − ε̂‖² (see the module table)."""
    check_choice("weighting", weighting, WEIGHTINGS)
    return _time_weight(sde, t, weighting, _resolve_t_min(sde, t_min, weighting))


def _time_weight(sde: SDE, t, weighting: str, t0: float) -> Array:
    """:func:`time_weight` for a checked weighting and lower limit ``t0``."""
    if weighting == "sigma2":
        return jnp.full_like(t, sde.T - t0)
    if weighting == "g2":
        return (sde.T - t0) * sde.diffusion_sq(t) / sde.variance(t)
    return jnp.full_like(t, sde.importance_normaliser(t0))


def perturb(
    sde: SDE, x0: Float[Array, "batch *event"], t: Float[Array, " batch"], eps: Float[Array, "batch *event"]
) -> tuple[Float[Array, "batch *event"], Float[Array, " batch"]]:
    """x_t = α_t x_0 + σ_t ε for a batch (the forward kernel, Song et al. 2021 Eq. 1), in the dtype of
    ``x0``; returns (x_t, σ_t)."""
    dtype = x0.dtype
    t = t.astype(dtype)
    alpha = sde.mean_coeff(t).astype(dtype)
    sigma = sde.std(t).astype(dtype)
    expand = (slice(None),) + (None,) * (x0.ndim - 1)
    return alpha[expand] * x0 + sigma[expand] * eps, sigma


def dsm_loss_terms(
    model: Callable,
    sde: SDE,
    x0: Float[Array, "batch *event"],
    t: Float[Array, " batch"],
    eps: Float[Array, "batch *event"],
    weighting: Weighting,
    *,
    parameterisation: Parameterisation = "score",
    t_min: float | None = None,
) -> Float[Array, " batch"]:
    """Per-example weighted DSM values at given (t, ε) — for common random numbers and exact tests.

    ``model(x_t, t)`` takes ONE example; it returns the score s_θ (``parameterisation="score"``)
    or the noise prediction ε̂_θ = −σ_t s_θ (``"eps"``). Raises ValueError on another
    ``parameterisation`` or weighting, and on a ``t_min`` outside [0, T) or with an infinite
    likelihood weight (see :func:`sample_time`).
    """
    check_choice("parameterisation", parameterisation, PARAMETERISATIONS)
    check_choice("weighting", weighting, WEIGHTINGS)
    return _dsm_loss_terms(model, sde, x0, t, eps, weighting, parameterisation, _resolve_t_min(sde, t_min, weighting))


def _dsm_loss_terms(model, sde, x0, t, eps, weighting: str, parameterisation: str, t0: float) -> Array:
    """:func:`dsm_loss_terms` for checked options and lower limit ``t0``."""
    dtype = x0.dtype
    t = t.astype(dtype)
    x_t, sigma = perturb(sde, x0, t, eps)
    expand = (slice(None),) + (None,) * (x0.ndim - 1)
    out = jax.vmap(model)(x_t, t)
    eps_hat = out if parameterisation == "eps" else -sigma[expand] * out
    sq = jnp.sum(jnp.square(eps - eps_hat).reshape(x0.shape[0], -1), axis=-1)
    return (0.5 * _time_weight(sde, t, weighting, t0) * sq).astype(dtype)


def dsm_loss(
    model: Callable,
    sde: SDE,
    x0: Float[Array, "batch *event"],
    key: PRNGKeyArray,
    *,
    weighting: Weighting = "g2_is",
    parameterisation: Parameterisation = "score",
    t_min: float | None = None,
) -> Float[Array, " batch"]:
    """Per-example unbiased estimates of J_DSM(θ; λ) over [t_min, T] (Song et al. 2021, Eq. 7).

    Average over the batch for the training loss; the mean's standard error is the batch
    standard deviation over √batch.
    """
    check_choice("parameterisation", parameterisation, PARAMETERISATIONS)
    check_choice("weighting", weighting, WEIGHTINGS)
    t0 = _resolve_t_min(sde, t_min, weighting)  # once: the finite-Z check is a small compiled program
    k_t, k_eps = jax.random.split(key)
    t = _sample_time(sde, k_t, (x0.shape[0],), weighting, t0, x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, dtype=x0.dtype)
    return _dsm_loss_terms(model, sde, x0, t, eps, weighting, parameterisation, t0)
