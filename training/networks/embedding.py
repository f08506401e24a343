"""Time embeddings for score networks (float32 regardless of jax_enable_x64).

* Positional: the sinusoidal embedding of the Transformer (Vaswani et al. 2017, §3.5) applied to
  999·t, as DDPM (Ho et al. 2020) and score_sde's continuous-time DDPM++ do.
* Input Fourier features (VDM, Kingma et al. 2021 App. B; THEORY.md §4.8): sin/cos(2^n·2π·x)
  of the noisy input itself, concatenated to its channels, so the network can resolve the fine
  8-bit structure that matters for the likelihood at small noise.
* Fourier: Gaussian random Fourier features sin/cos(2π w c) with w ~ N(0, scale²) fixed at
  initialisation (Tancik et al. 2020; used by NCSN++ in Song et al. 2021b), applied here to
  c = log t so that the small-t end, where the likelihood weighting puts its mass, is resolved.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

F32 = jnp.float32


def positional_embedding(t: Float[Array, ""], dim: int, *, scale: float = 999.0) -> Float[Array, " d"]:
    """[sin(c ω_k), cos(c ω_k)] with c = scale·t and ω_k = 10000^{−k/(dim/2 − 1)}."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=F32) / max(half - 1, 1))
    arg = (scale * t.astype(F32)) * freqs
    emb = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])
    return jnp.pad(emb, (0, dim - 2 * half))


def input_fourier_features(x: Float[Array, "c *rest"], exponents: tuple[int, ...]) -> Float[Array, "c2 *rest"]:
    """[x, sin(2^n 2π x), cos(2^n 2π x) for n in ``exponents``] along the first (channel) axis
    (VDM's ``Base2FourierFeatures``; VDM uses n ∈ {6, 7}). ``()`` returns x unchanged."""
    if not exponents:
        return x
    freqs = jnp.asarray([2.0**n * 2.0 * math.pi for n in exponents], x.dtype)
    arg = freqs.reshape((-1,) + (1,) * x.ndim) * x[None]
    feats = jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=0)
    return jnp.concatenate([x, feats.reshape((-1,) + x.shape[1:])], axis=0)


class FourierEmbedding(eqx.Module):
    """Gaussian Fourier features of log t (the frequencies are not trained)."""

    freqs: Float[Array, " half"]

    def __init__(self, dim: int, scale: float = 16.0, *, key: PRNGKeyArray):
        if dim % 2:
            raise ValueError(f"Fourier embedding dimension must be even; got {dim}.")
        self.freqs = scale * jax.random.normal(key, (dim // 2,), dtype=F32)

    def __call__(self, t: Float[Array, ""]) -> Float[Array, " dim"]:
        freqs = jax.lax.stop_gradient(self.freqs)
        arg = 2.0 * jnp.pi * jnp.log(t.astype(F32)) * freqs
        return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)])
