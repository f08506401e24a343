"""DDPM++ U-Net (the "DDPM++ cont." network of Song et al. 2021b, *Score-Based Generative Modeling
through Stochastic Differential Equations*, ICLR, App. H / Table 3), used with the likelihood
weighting by Song, Durkan, Murray & Ermon 2021 (Table 2), in equinox.

Design (written from the description, not ported): BigGAN-type residual blocks with a
time-embedding bias, GroupNorm(min(C/4, 32)), swish, dropout and 1/√2 skip rescaling;
down/up-sampling inside residual blocks (2×2 average pooling / nearest neighbour; the "fir=False"
setting); DDPM-style single-head self-attention at the listed resolutions (16×16 for CIFAR-10);
``num_res_blocks`` blocks per resolution on the way down and ``num_res_blocks + 1`` (with skip
concatenation) on the way up; time embedding (positional 999·t or Gaussian Fourier) → Dense(4nf)
→ swish → Dense(4nf). The last convolution of every residual block, the attention output
projection and the output convolution start at zero (score_sde's ``init_scale=0``), so ε̂ ≡ 0 at
initialisation. The network predicts the noise ε̂_θ(x, t); the score is s_θ = −ε̂_θ/σ_t.

One example at a time: x has shape (C, H, W) (channels first); vmap for a batch.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from training.networks.embedding import F32, FourierEmbedding, input_fourier_features, positional_embedding

_SQRT_HALF = 1.0 / math.sqrt(2.0)


def _zeros_like_layer(layer):
    return eqx.tree_at(lambda m: (m.weight, m.bias), layer, (jnp.zeros_like(layer.weight), jnp.zeros_like(layer.bias)))


class ChannelsLastConv2d(eqx.nn.Conv2d):
    """``eqx.nn.Conv2d`` (same parameters: weight (O, I, kh, kw), bias (O, 1, 1); stride 1, zero
    padding) on a (C, H, W) input, computed channels-last: transpose to (1, H, W, C), convolve with
    NHWC/HWIO dimension numbers, transpose back.

    Why: on XLA:CPU a channels-first convolution inside a ``while_loop`` body — every adaptive
    diffrax solve, i.e. every ODE likelihood or sample — runs several times slower than outside a
    loop (jax-ml/jax#12868); channels-last does not. Measured (benchmarks/eval_throughput.py, 2-core
    CPU): a 16-channel 3×3 convolution on 4×16×32×32 took 4.8 ms per call in a loop channels-first,
    0.30 ms with these transposes; the DDPM++ ODE bits/dim evaluation became 8–10× faster."""

    def __call__(self, x: Float[Array, "c h w"], *, key: PRNGKeyArray | None = None) -> Float[Array, "o h w"]:
        del key
        w = jnp.transpose(self.weight, (2, 3, 1, 0)).astype(x.dtype)  # (kh, kw, I, O)
        y = jax.lax.conv_general_dilated(jnp.transpose(x, (1, 2, 0))[None], w, (1, 1), self.padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]
        y = jnp.transpose(y, (2, 0, 1))
        return y if self.bias is None else y + self.bias.astype(x.dtype)


def _conv(cin: int, cout: int, k: int, *, key, zero: bool = False) -> eqx.nn.Conv2d:
    conv = ChannelsLastConv2d(cin, cout, k, padding=k // 2, dtype=F32, key=key)
    return _zeros_like_layer(conv) if zero else conv


def _norm(c: int) -> eqx.nn.GroupNorm:
    return eqx.nn.GroupNorm(min(c // 4, 32), c, eps=1e-6, dtype=F32)


def _down(x: Float[Array, "c h w"]) -> Float[Array, "c h2 w2"]:
    c, h, w = x.shape
    return x.reshape(c, h // 2, 2, w // 2, 2).mean(axis=(2, 4))


def _up(x: Float[Array, "c h w"]) -> Float[Array, "c h2 w2"]:
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ResBlock(eqx.Module):
    """BigGAN-type residual block: (skip(x) + conv(drop(act(GN(conv(act(GN(x))) + Dense(temb))))))/√2."""

    norm0: eqx.nn.GroupNorm
    conv0: eqx.nn.Conv2d
    temb_proj: eqx.nn.Linear
    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None
    dropout: float = eqx.field(static=True)
    resample: str = eqx.field(static=True)  # "none" | "up" | "down"

    def __init__(self, cin: int, cout: int, temb_dim: int, dropout: float, resample: str = "none", *, key):
        k0, k1, k2, k3 = jax.random.split(key, 4)
        self.norm0 = _norm(cin)
        self.conv0 = _conv(cin, cout, 3, key=k0)
        self.temb_proj = _zeros_like_layer(eqx.nn.Linear(temb_dim, cout, dtype=F32, key=k1))
        self.norm1 = _norm(cout)
        self.conv1 = _conv(cout, cout, 3, key=k2, zero=True)
        self.skip = _conv(cin, cout, 1, key=k3) if (cin != cout or resample != "none") else None
        self.dropout = float(dropout)
        self.resample = resample

    def __call__(
        self, x: Float[Array, "ci h w"], temb: Float[Array, " e"], key: PRNGKeyArray | None
    ) -> Float[Array, "co h2 w2"]:
        h = jax.nn.silu(self.norm0(x))
        if self.resample == "up":
            h, x = _up(h), _up(x)
        elif self.resample == "down":
            h, x = _down(h), _down(x)
        h = self.conv0(h) + self.temb_proj(jax.nn.silu(temb))[:, None, None]
        h = jax.nn.silu(self.norm1(h))
        if key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(key, 1.0 - self.dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - self.dropout), jnp.zeros((), h.dtype))
        h = self.conv1(h)
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) * _SQRT_HALF


class AttnBlock(eqx.Module):
    """Single-head self-attention over the H·W positions (DDPM's AttnBlock), zero-initialised output."""

    norm: eqx.nn.GroupNorm
    qkv: eqx.nn.Conv2d
    out: eqx.nn.Conv2d

    def __init__(self, c: int, *, key):
        k0, k1 = jax.random.split(key)
        self.norm = _norm(c)
        self.qkv = _conv(c, 3 * c, 1, key=k0)
        self.out = _conv(c, c, 1, key=k1, zero=True)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c h w"]:
        c, hh, ww = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(3 * c, hh * ww), 3, axis=0)
        logits = (q.T @ k) * (c**-0.5)  # (HW, HW)
        w = jax.nn.softmax(logits.astype(F32), axis=-1).astype(x.dtype)
        h = (v @ w.T).reshape(c, hh, ww)
        return (x + self.out(h)) * _SQRT_HALF


class DDPMpp(eqx.Module):
    """DDPM++ noise predictor ε̂_θ(x, t) for ONE image x of shape (C, H, W)."""

    image_shape: tuple[int, int, int] = eqx.field(static=True)
    nf: int = eqx.field(static=True)
    embedding: str = eqx.field(static=True)
    ch_mult: tuple[int, ...] = eqx.field(static=True)
    num_res_blocks: int = eqx.field(static=True)
    attn_resolutions: tuple[int, ...] = eqx.field(static=True)
    input_fourier: tuple[int, ...] = eqx.field(static=True)
    fourier: FourierEmbedding | None
    temb0: eqx.nn.Linear
    temb1: eqx.nn.Linear
    conv_in: eqx.nn.Conv2d
    down: tuple[eqx.Module, ...]
    down_push: tuple[bool, ...] = eqx.field(static=True)  # whether block i's output is a skip connection
    mid: tuple[eqx.Module, ...]
    up: tuple[eqx.Module, ...]
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 32, 32),
        *,
        nf: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 4,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        embedding: str = "positional",
        fourier_scale: float = 16.0,
        input_fourier: tuple[int, ...] = (),
        key: PRNGKeyArray,
    ):
        channels, height, width = image_shape
        n_down = len(ch_mult) - 1
        if height != width or height % (2**n_down):
            raise ValueError(
                f"DDPM++ needs square images whose side is divisible by 2^{n_down} (len(ch_mult) − 1 halvings); "
                f"got image shape {image_shape}."
            )
        if nf % 4 or min(nf * m for m in ch_mult) < 4:
            raise ValueError(f"nf must be a multiple of 4 (GroupNorm uses C/4 groups); got nf={nf}.")
        if embedding not in ("positional", "fourier"):
            raise ValueError(f"embedding must be 'positional' or 'fourier'; got {embedding!r}.")
        self.image_shape = (int(channels), int(height), int(width))
        self.nf, self.embedding, self.ch_mult = nf, embedding, tuple(ch_mult)
        self.num_res_blocks, self.attn_resolutions = num_res_blocks, tuple(attn_resolutions)
        keys = iter(jax.random.split(key, 8 + 4 * len(ch_mult) * (2 * num_res_blocks + 4)))
        temb_dim = 4 * nf
        emb_in = 2 * nf if embedding == "fourier" else nf
        self.fourier = FourierEmbedding(emb_in, fourier_scale, key=next(keys)) if embedding == "fourier" else None
        self.temb0 = eqx.nn.Linear(emb_in, temb_dim, dtype=F32, key=next(keys))
        self.temb1 = eqx.nn.Linear(temb_dim, temb_dim, dtype=F32, key=next(keys))
        self.input_fourier = tuple(int(n) for n in input_fourier)
        self.conv_in = _conv(channels * (1 + 2 * len(self.input_fourier)), nf, 3, key=next(keys))

        down: list[eqx.Module] = []
        push: list[bool] = []
        skip_ch = [nf]
        c, res = nf, height
        for i, m in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                down.append(ResBlock(c, nf * m, temb_dim, dropout, key=next(keys)))
                c = nf * m
                push.append(res not in self.attn_resolutions)
                if res in self.attn_resolutions:
                    down.append(AttnBlock(c, key=next(keys)))
                    push.append(True)
                skip_ch.append(c)
            if i != n_down:
                down.append(ResBlock(c, c, temb_dim, dropout, "down", key=next(keys)))
                push.append(True)
                res //= 2
                skip_ch.append(c)
        self.down = tuple(down)
        self.down_push = tuple(push)
        self.mid = (
            ResBlock(c, c, temb_dim, dropout, key=next(keys)),
            AttnBlock(c, key=next(keys)),
            ResBlock(c, c, temb_dim, dropout, key=next(keys)),
        )
        up: list[eqx.Module] = []
        for i in reversed(range(len(ch_mult))):
            m = ch_mult[i]
            for _ in range(num_res_blocks + 1):
                up.append(ResBlock(c + skip_ch.pop(), nf * m, temb_dim, dropout, key=next(keys)))
                c = nf * m
            if res in self.attn_resolutions:
                up.append(AttnBlock(c, key=next(keys)))
            if i != 0:
                up.append(ResBlock(c, c, temb_dim, dropout, "up", key=next(keys)))
                res *= 2
        assert not skip_ch
        self.up = tuple(up)
        self.norm_out = _norm(c)
        self.conv_out = _conv(c, channels, 3, key=next(keys), zero=True)

    @property
    def n_res_blocks_total(self) -> int:
        return sum(isinstance(b, ResBlock) for b in self.down + self.mid + self.up)

    def __call__(
        self, x: Float[Array, "c h w"], t: Float[Array, ""], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, "c h w"]:
        """ε̂_θ(x, t). ``key`` turns dropout on (training); ``None`` is inference."""
        if tuple(x.shape) != self.image_shape:
            raise ValueError(f"DDPM++ was built for images of shape (C, H, W) = {self.image_shape}; got {tuple(x.shape)}.")
        dtype = x.dtype
        if self.fourier is not None:
            emb = self.fourier(t)
        else:
            emb = positional_embedding(t, self.nf)
        temb = self.temb1(jax.nn.silu(self.temb0(emb.astype(dtype))))
        n_blocks = self.n_res_blocks_total
        bkeys = list(jax.random.split(key, n_blocks)) if key is not None else [None] * n_blocks
        bkeys.reverse()

        h = self.conv_in(input_fourier_features(x, self.input_fourier))
        hs = [h]
        for block, push in zip(self.down, self.down_push):
            h = block(h, temb, bkeys.pop()) if isinstance(block, ResBlock) else block(h)
            if push:
                hs.append(h)
        for block in self.mid:
            h = block(h, temb, bkeys.pop()) if isinstance(block, ResBlock) else block(h)
        for block in self.up:
            if isinstance(block, ResBlock) and block.resample == "none":
                h = block(jnp.concatenate([h, hs.pop()], axis=0), temb, bkeys.pop())
            elif isinstance(block, ResBlock):
                h = block(h, temb, bkeys.pop())
            else:
                h = block(h)
        assert not hs
        return self.conv_out(jax.nn.silu(self.norm_out(h)))


def count_params(model) -> int:
    """Number of trainable scalars (array leaves), without allocating them if ``model`` is abstract."""
    def is_leaf_array(a) -> bool:
        return eqx.is_array(a) or isinstance(a, jax.ShapeDtypeStruct)

    return sum(int(math.prod(a.shape)) for a in jax.tree.leaves(eqx.filter(model, is_leaf_array)))
