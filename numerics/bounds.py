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

__all__ = ["EpsOffsetBound", "neg_prior_expectation", "eps_offset_bound"]


class EpsOffsetBound(eqx.Module):
    """Per-example terms; ``total = prior + diffusion − constant + decoder − entropy`` (nats)."""

    total: Float[Array, " N"]
    prior: Float[Array, " N"]
    diffusion: Float[Array, " N"]
    constant: Float[Array, ""]
    decoder: Float[Array, " N"]
    entropy: Float[Array, ""]


def neg_prior_expectation(sde: SDE, x0: Float[Array, "N *event"]) -> Float[Array, " N"]:
    """−E[log π(X_T) | X_0 = x] for the SDE's prior π = N(0, s² I), exact:
    ½(α_T² ‖x‖² + D σ_T²)/s² + (D/2) log(2π s²)."""
    n = x0.shape[0]
    dim = x0[0].size
    T = jnp.asarray(sde.T, x0.dtype)
    a_T, v_T = sde.mean_coeff(T), sde.variance(T)
    s2 = jnp.square(sde.prior_std)  # a traced parameter for the VE SDE: no float()
    sq = jnp.sum(jnp.square(x0.reshape(n, -1)), -1)
    return (0.5 * (a_T**2 * sq + dim * v_T) / s2 + 0.5 * dim * jnp.log(2 * math.pi * s2)).astype(x0.dtype)


def eps_offset_bound(
    score_fn: Callable,
    sde: SDE,
    x0: Float[Array, "N *event"],
    diffusion: Float[Array, " N"],
    eps_0: Float[Array, "N *event"],
) -> EpsOffsetBound:
    """Assemble the ε-offset bound (ε = ``sde.t_min``) from a per-example estimate of the diffusion term
    ½∫_ε^T g² E‖s_θ + ε/σ‖² dt; ``eps_0`` draws x_ε = α_ε x + σ_ε ε₀ for the Tweedie decoder
    m̂ = (x_ε + σ_ε² s_θ(x_ε, ε))/α_ε. ``score_fn(x, t)`` takes one example. Computes in x0's dtype."""
    n = x0.shape[0]
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
