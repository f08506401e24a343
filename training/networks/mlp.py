"""Residual MLP noise-prediction network for low-dimensional data.

ε̂_θ(x, t) with the score s_θ = −ε̂_θ/σ_t (the noise-prediction parameterisation of Ho et al. 2020,
used with the likelihood weighting by Song et al. 2021, §4 and Kingma et al. 2021, Eq. 17).
Architecture: sinusoidal time embedding → 2-layer MLP; input projection; ``depth`` pre-norm
residual blocks h ← h + W₂ silu(W₁ silu(LN(h)) + A temb); LayerNorm → linear output.
The output layer starts at zero so that ε̂ ≡ 0 at initialisation (the loss then equals its
value for s ≡ 0, a useful check).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from training.networks.embedding import F32, input_fourier_features, positional_embedding


def _zero_linear(layer: eqx.nn.Linear) -> eqx.nn.Linear:
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (jnp.zeros_like(layer.weight), jnp.zeros_like(layer.bias)))


class _ResBlock(eqx.Module):
    norm: eqx.nn.LayerNorm
    lin1: eqx.nn.Linear
    temb_proj: eqx.nn.Linear
    lin2: eqx.nn.Linear

    def __init__(self, width: int, temb_dim: int, *, key: PRNGKeyArray):
        k1, k2, k3 = jax.random.split(key, 3)
        self.norm = eqx.nn.LayerNorm(width, dtype=F32)
        self.lin1 = eqx.nn.Linear(width, width, dtype=F32, key=k1)
        self.temb_proj = eqx.nn.Linear(temb_dim, width, dtype=F32, key=k2)
        self.lin2 = eqx.nn.Linear(width, width, dtype=F32, key=k3)

    def __call__(self, h: Float[Array, " w"], temb: Float[Array, " e"]) -> Float[Array, " w"]:
        z = self.lin1(jax.nn.silu(self.norm(h))) + self.temb_proj(temb)
        return h + self.lin2(jax.nn.silu(z))


class MLPScoreNet(eqx.Module):
    """Noise predictor ε̂_θ(x, t) for ONE example x of shape (D,); vmap for a batch."""

    temb_dim: int = eqx.field(static=True)
    input_fourier: tuple[int, ...] = eqx.field(static=True)
    temb1: eqx.nn.Linear
    temb2: eqx.nn.Linear
    inp: eqx.nn.Linear
    blocks: tuple[_ResBlock, ...]
    out_norm: eqx.nn.LayerNorm
    out: eqx.nn.Linear

    def __init__(self, dim: int, width: int = 128, depth: int = 3, temb_dim: int = 64, *,
                 input_fourier: tuple[int, ...] = (), key: PRNGKeyArray):
        keys = jax.random.split(key, depth + 4)
        self.temb_dim = temb_dim
        self.input_fourier = tuple(int(n) for n in input_fourier)
        self.temb1 = eqx.nn.Linear(temb_dim, temb_dim, dtype=F32, key=keys[0])
        self.temb2 = eqx.nn.Linear(temb_dim, temb_dim, dtype=F32, key=keys[1])
        self.inp = eqx.nn.Linear(dim * (1 + 2 * len(self.input_fourier)), width, dtype=F32, key=keys[2])
        self.blocks = tuple(_ResBlock(width, temb_dim, key=k) for k in keys[4:])
        self.out_norm = eqx.nn.LayerNorm(width, dtype=F32)
        self.out = _zero_linear(eqx.nn.Linear(width, dim, dtype=F32, key=keys[3]))

    def __call__(
        self, x: Float[Array, " D"], t: Float[Array, ""], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " D"]:
        del key  # no dropout
        dtype = x.dtype
        temb = positional_embedding(t, self.temb_dim).astype(dtype)
        temb = self.temb2(jax.nn.silu(self.temb1(temb)))
        h = self.inp(input_fourier_features(x, self.input_fourier))
        for block in self.blocks:
            h = block(h, temb)
        return self.out(jax.nn.silu(self.out_norm(h)))


class FlatMLPScoreNet(eqx.Module):
    """:class:`MLPScoreNet` on flattened examples of any shape (e.g. 8×8 images as 64-vectors): a
    cheap CPU baseline network for image data; the output has the input's shape."""

    event_shape: tuple[int, ...] = eqx.field(static=True)
    mlp: MLPScoreNet

    def __init__(self, event_shape: tuple[int, ...], width: int = 128, depth: int = 3, temb_dim: int = 64, *,
                 input_fourier: tuple[int, ...] = (), key: PRNGKeyArray):
        self.event_shape = tuple(int(n) for n in event_shape)
        dim = 1
        for n in self.event_shape:
            dim *= n
        self.mlp = MLPScoreNet(dim, width, depth, temb_dim, input_fourier=input_fourier, key=key)

    def __call__(self, x: Float[Array, "*event"], t: Float[Array, ""], *, key: PRNGKeyArray | None = None
                 ) -> Float[Array, "*event"]:
        return self.mlp(x.reshape(-1), t, key=key).reshape(x.shape)
