"""Song et al. 2021's ε-offset variational bound on −log p_0(x): the pieces around the diffusion term.

score_flow's ``bound_likelihood`` integrates Theorem 2's DSM bound over [ε, T] and closes [0, ε] with a
Gaussian (Tweedie) decoder (THEORY.md §2.7):

    −log p_0(x) ≤ −E[log π(X_T) | X_0 = x]                                   (prior term, exact here)
                 + ½ ∫_ε^T g² E‖s_θ(X_t, t) + ε/σ_t‖² dt                     (diffusion term)
                 − (D/2) log(σ_T²/σ_ε²)                                       (Eq. 2.1 constant)
                 + E[−log N(x; m̂(X_ε), σ_ε²/α_ε² I)]                          (decoder, m̂ Tweedie)
                 − (D/2) log(2πe σ_ε²)                                        (entropy of q_{0ε}(·|x))

The diffusion term is estimated by the caller — by Monte Carlo over t with :mod:`numerics.losses`
(training's evaluation) or by quadrature in log-SNR (the checks) — and passed in; everything else is
written once, here. By VDM's equivalence (THEORY.md §4.7) the total is also VDM's −VLB with a Gaussian
reconstruction term.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from numerics.losses import perturb
from numerics.sde import SDE

__all__ = ["EpsOffsetBound", "prior_cross_entropy", "neg_prior_expectation", "eps_offset_bound"]


class EpsOffsetBound(eqx.Module):
    """Per-example terms; ``total = prior + diffusion − constant + decoder − entropy`` (nats)."""

    total: Float[Array, " N"]
    prior: Float[Array, " N"]
    diffusion: Float[Array, " N"]
    constant: Float[Array, ""]
    decoder: Float[Array, " N"]
    entropy: Float[Array, ""]


def prior_cross_entropy(sde: SDE, sq_norm, dim: int, coeffs=None) -> Array:
    """−E_ε[log π(a x + b ε)], ε ~ N(0, I_D), for the SDE's prior π = N(0, s² I) (s = ``sde.prior_std``),
    as a function of ‖x‖² = ``sq_norm`` (Song et al. 2021 Thm 2's prior term; THEORY.md §2.4, §2.7):

        ½(a² ‖x‖² + D b²)/s² + (D/2) log(2π s²).

    ``coeffs`` = (a, b²) are the coefficients of X_T given the conditioning point; the default
    (α_T, σ_T²) conditions on X_0 = x, and (α_T/α_ε, σ_T² − (α_T/α_ε)² σ_ε²) on X_ε = x. The value is
    affine in ‖x‖², so ``sq_norm`` = E‖x‖² gives its mean over a law of x as well. Everything is
    jnp (SDE parameters may be traced, e.g. the VE SDE's prior_std): no float() on them here."""
    dim = int(dim)
    if dim < 1:
        raise ValueError(f"dim must be a positive integer (the event size D); got {dim}.")
    if coeffs is None:
        T = jnp.asarray(sde.T, jnp.result_type(sq_norm, float))
        a, b2 = sde.mean_coeff(T), sde.variance(T)
    else:
        if len(coeffs) != 2:
            raise ValueError(f"coeffs must be a pair (a_T, b_T^2); got {coeffs!r}.")
        a, b2 = coeffs
    s2 = jnp.square(sde.prior_std)  # a traced parameter for the VE SDE: no float()
    return 0.5 * (jnp.square(a) * sq_norm + dim * b2) / s2 + 0.5 * dim * jnp.log(2 * math.pi * s2)


def neg_prior_expectation(sde: SDE, x0: Float[Array, "N *event"], coeffs=None) -> Float[Array, " N"]:
    """−E[log π(X_T) | x] per example for the SDE's prior π = N(0, s² I), exact:
    ½(a_T² ‖x‖² + D b_T²)/s² + (D/2) log(2π s²) (:func:`prior_cross_entropy`). By default
    (a_T, b_T²) = (α_T, σ_T²), i.e. conditioned on X_0 = x; pass ``coeffs=(a_T, b_T²)`` for another
    conditioning (e.g. on X_ε = x). Computes in x0's dtype."""
    x0 = jnp.asarray(x0)
    if x0.ndim < 1:
        raise ValueError(f"x0 must have a leading batch axis, shape (N, *event); got shape {x0.shape}.")
    n = x0.shape[0]
    dim = x0[0].size
    sq = jnp.sum(jnp.square(x0.reshape(n, -1)), -1)
    return prior_cross_entropy(sde, sq, dim, coeffs).astype(x0.dtype)


def eps_offset_bound(
    score_fn: Callable,
    sde: SDE,
    x0: Float[Array, "N *event"],
    diffusion: Float[Array, " N"],
    eps_0: Float[Array, "N *event"],
) -> EpsOffsetBound:
    """Assemble the ε-offset bound (ε = ``sde.t_min``) from a per-example estimate of the diffusion term
    ½∫_ε^T g² E‖s_θ + ε/σ‖² dt; ``eps_0`` draws x_ε = α_ε x + σ_ε ε₀ for the Tweedie decoder
    m̂ = (x_ε + σ_ε² s_θ(x_ε, ε))/α_ε. ``score_fn(x, t)`` takes one example. Computes in x0's dtype.

    Shapes are checked (jaxtyping only enforces them under the tests): ``diffusion`` must be (N,) and
    ``eps_0`` like ``x0``, else ValueError — a (N, 1) diffusion would otherwise broadcast to (N, N)."""
    x0 = jnp.asarray(x0)
    if x0.ndim < 1:
        raise ValueError(f"x0 must have a leading batch axis, shape (N, *event); got shape {x0.shape}.")
    n = x0.shape[0]
    if jnp.shape(diffusion) != (n,):
        raise ValueError(
            f"diffusion must hold one value per example, shape ({n},) for x0 of shape {x0.shape}; "
            f"got shape {jnp.shape(diffusion)}."
        )
    if jnp.shape(eps_0) != x0.shape:
        raise ValueError(f"eps_0 must have the shape of x0, {x0.shape}; got shape {jnp.shape(eps_0)}.")
    dim = x0[0].size
    dtype = x0.dtype
    t_e = jnp.asarray(sde.t_min, dtype)
    a_e, v_e = sde.mean_coeff(t_e).astype(dtype), sde.variance(t_e).astype(dtype)
    constant = 0.5 * dim * jnp.log(sde.variance(jnp.asarray(sde.T, dtype)) / v_e)
    x_e, _ = perturb(sde, x0, jnp.full((n,), t_e), eps_0)
    s = jax.vmap(score_fn, in_axes=(0, None))(x_e, t_e)
    m_hat = (x_e + v_e * s) / a_e
    dec_var = v_e / a_e**2
    decoder = 0.5 * jnp.sum(jnp.square((x0 - m_hat).reshape(n, -1)), -1) / dec_var + 0.5 * dim * jnp.log(
        2 * jnp.pi * dec_var
    )
    entropy = 0.5 * dim * jnp.log(2 * jnp.pi * jnp.e * v_e)
    prior = neg_prior_expectation(sde, x0)
    total = prior + diffusion - constant + decoder - entropy
    return EpsOffsetBound(
        total=total, prior=prior, diffusion=diffusion, constant=constant, decoder=decoder, entropy=entropy
    )
