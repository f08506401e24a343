"""Variational dequantisation: train a conditional flow q(u | k) for a trained score model.

Song, Durkan, Murray & Ermon 2021 (*Maximum Likelihood Training of Score-Based Diffusion Models*,
§5 "variational dequantization", after Ho et al. 2019, *Flow++*, §3.1; THEORY.md §2.9) replace the
uniform noise u ~ U[0,1)^D that turns 8-bit pixels k into continuous data by a learned density
q(u | k) on the unit cube. With x = 2(k + u)/256 − 1 (data centred to [−1, 1], the score model's
space) and p_u(u | k) = p_x(x) · (2/256)^D, Jensen's inequality gives for every q

    −log P(k) ≤ E_{u~q(·|k)}[ −log p_x(x(u)) + log q(u | k) ] + D log 256 − D log 2,

and Song et al.'s ε-offset bound B(x) ≥ −log p_x(x) (Theorem 2 + the [0, ε] Tweedie decoder,
THEORY.md §2.7; :func:`training.evaluate.eps_offset_bound_terms`) makes the right side the
computable bound E_q[B(x(u)) + log q(u|k)] + D log 128 (THEORY.md §2.9, "variational
dequantization"). Uniform dequantisation is the special case q ≡ 1 (log q ≡ 0). In bits/dim the
bound is ``numerics.likelihood.bits_per_dim(−(B + log q), D, data_scale=2)``.

* :class:`FlowDequantizer` — a small Flow++-style conditional flow: base noise ε ~ Logistic(0, 1)^D,
  ``n_layers`` checkerboard coupling layers conditioned on a small conv net of the (centred) image
  k, then u = sigmoid(z). Each coupling transforms half of the elements by the monotone map
  z ↦ e^a·(z + Σ_k w_k s_k [σ((z − μ_k)/s_k) − ½]) + b — the identity plus a weighted sum of K
  logistic CDFs (Flow++'s logistic-mixture CDF coupling, Ho et al. 2019 §3.2, in a residual form),
  with |w_k| < 4(1 − δ)/K so that the slope lies in e^a·(δ, 2 − δ); its log-det is exact,
  a + log1p(Σ_k w_k σ'((z − μ_k)/s_k)). The conditioner's output convolution starts at zero, so at
  initialisation every coupling is exactly the identity, z = ε, and since sigmoid of a standard
  logistic is U(0, 1), **q is exactly uniform at initialisation and log q ≡ 0 bit for bit**:
  variational dequantisation starts as uniform dequantisation (same bound), and training moves q
  only where that lowers the bound (stochastic gradients: not guaranteed step by step; measure it
  with :func:`compare_dequantization`).
* :func:`dequantize_variational` — (x, log q) for a batch of 8-bit images.
* :func:`train_dequantizer` — fits q with the score model frozen (Song et al.'s ``train_deq``):
  minimise E_q[B(x(u)) + log q(u | k)] over the flow's parameters only, one unbiased draw of the
  ε-offset bound per example (t ~ p(t) ∝ g²/σ², stratified over the batch; fresh ε), gradients
  flowing through x into the frozen network; optax Adam with global-norm clipping; float32.
* :func:`compare_dequantization` — the bound with variational and with uniform dequantisation on
  the same images with common random numbers (the same base noise, t and ε), in bits/dim, and
  their paired difference with its standard error.
* :func:`save_dequantizer` / :func:`load_dequantizer` — ``<workdir>/dequantizer/`` holds
  ``config.json`` (hyper-parameters, step, history), ``flow.eqx`` (``eqx.tree_serialise_leaves``)
  and ``opt_state.eqx`` (to resume); it is written to a temporary folder and swapped in so that a
  complete version exists at every instant (``dequantizer.old`` between the two renames).

Command line (``python -m training dequant``)::

    python -m training dequant --workdir DIR [--steps N] [--batch-size B] [--lr LR] [--resume]

trains q for the latest (EMA) checkpoint of the training work directory DIR on its image data
(digits or CIFAR-10), shows progress, saves to DIR/dequantizer/ every ``--ckpt-every`` steps
(``--resume`` continues from there, against the score checkpoint it was fitted to), and at the end
compares the variational and uniform bounds on ``--eval-images`` held-out images: drawn from the
test split when the score model trained on the training split (the presets), so that neither model
saw them; otherwise (a model trained on ``data.split=test``) held out from the dequantiser's
training images only, and the output says so. One dequantiser run at a time per work directory: it holds
``DIR/.dequantizer.lock`` (not the trainer's lock: the score model may go on training meanwhile).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, UInt8

import numerics
from numerics.likelihood import bits_per_dim
from training.data import array_fingerprint, check_images, dequantize_with
from training.fileio import DirectoryBusyError, fsync_dir, fsync_file, lock_directory, read_json, write_atomic
from training.metrics import all_finite

__all__ = [
    "FlowDequantizer",
    "DequantTrainResult",
    "BoundComparison",
    "dequantize_variational",
    "dequantization_bound_terms",
    "train_dequantizer",
    "compare_dequantization",
    "save_dequantizer",
    "load_dequantizer",
    "add_arguments",
    "run",
]

F32 = jnp.float32
SUBDIR = "dequantizer"
_FORMAT = 1


# --- the flow -------------------------------------------------------------------------------------


def _zero_conv(conv: eqx.nn.Conv2d) -> eqx.nn.Conv2d:
    return eqx.tree_at(lambda c: (c.weight, c.bias), conv, (jnp.zeros_like(conv.weight), jnp.zeros_like(conv.bias)))


def _log_logistic_pdf(v: Array) -> Array:
    """log σ'(v) = log σ(v) + log σ(−v): the standard logistic log-density, and log du/dz of u = σ(z)."""
    return jax.nn.log_sigmoid(v) + jax.nn.log_sigmoid(-v)


def _transform_mask(shape: tuple[int, int, int], parity: int, channel_mix: bool) -> Array:
    """Boolean (C, H, W) mask of the elements a coupling transforms: a checkerboard of the given parity,
    made three-dimensional (alternating along channels too) when ``channel_mix``."""
    c, h, w = shape
    ci = jnp.arange(c)[:, None, None]
    hi = jnp.arange(h)[None, :, None]
    wi = jnp.arange(w)[None, None, :]
    s = hi + wi + parity + (ci if channel_mix else 0)
    return jnp.broadcast_to(s % 2 == 0, shape)


class _CondNet(eqx.Module):
    """Features h(k) of the centred image: conv3×3 → SiLU → conv3×3 → SiLU (Flow++'s conditioning net)."""

    conv0: eqx.nn.Conv2d
    conv1: eqx.nn.Conv2d

    def __init__(self, channels: int, hidden: int, *, key: PRNGKeyArray):
        k0, k1 = jax.random.split(key)
        self.conv0 = eqx.nn.Conv2d(channels, hidden, 3, padding=1, dtype=F32, key=k0)
        self.conv1 = eqx.nn.Conv2d(hidden, hidden, 3, padding=1, dtype=F32, key=k1)

    def __call__(self, xk: Float[Array, "c h w"]) -> Float[Array, "f h w"]:
        return jax.nn.silu(self.conv1(jax.nn.silu(self.conv0(xk))))


class _Coupling(eqx.Module):
    """One conditional coupling layer (see the module docstring for the element-wise map)."""

    conv0: eqx.nn.Conv2d
    conv1: eqx.nn.Conv2d
    out: eqx.nn.Conv2d
    centres: Array
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    parity: int = eqx.field(static=True)
    channel_mix: bool = eqx.field(static=True)
    n_components: int = eqx.field(static=True)
    delta: float = eqx.field(static=True)

    def __init__(self, image_shape, hidden: int, n_components: int, parity: int, channel_mix: bool,
                 delta: float, *, key: PRNGKeyArray):
        c = image_shape[0]
        k0, k1, k2 = jax.random.split(key, 3)
        self.conv0 = eqx.nn.Conv2d(c + hidden, hidden, 3, padding=1, dtype=F32, key=k0)
        self.conv1 = eqx.nn.Conv2d(hidden, hidden, 3, padding=1, dtype=F32, key=k1)
        # zero output: a = b = 0 and w_k = 0 → the coupling is exactly the identity at initialisation
        self.out = _zero_conv(eqx.nn.Conv2d(hidden, c * (2 + 3 * n_components), 1, dtype=F32, key=k2))
        # fixed, distinct component centres in logit space break the symmetry between components
        self.centres = jnp.linspace(-2.0, 2.0, n_components, dtype=F32) if n_components > 1 else jnp.zeros((1,), F32)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.parity, self.channel_mix = int(parity), bool(channel_mix)
        self.n_components, self.delta = int(n_components), float(delta)

    def _params(self, z, h):
        """Mask and element-wise parameters (a, b, w, μ, s) from the untransformed half of ``z`` and h(k)."""
        c, hh, ww = z.shape
        K = self.n_components
        tmask = _transform_mask((c, hh, ww), self.parity, self.channel_mix)
        inp = jnp.concatenate([jnp.where(tmask, jnp.zeros_like(z), z), h], axis=0)
        p = self.out(jax.nn.silu(self.conv1(jax.nn.silu(self.conv0(inp)))))
        p = p.reshape(c, 2 + 3 * K, hh, ww)
        a = 3.0 * jnp.tanh(p[:, 0] / 3.0)
        b = p[:, 1]
        w = (4.0 * (1.0 - self.delta) / K) * jnp.tanh(p[:, 2 : 2 + K])  # (c, K, h, w)
        mu = self.centres[None, :, None, None] + p[:, 2 + K : 2 + 2 * K]
        s = jnp.exp(2.0 * jnp.tanh(p[:, 2 + 2 * K :] / 2.0))
        return tmask, a, b, w, mu, s

    @staticmethod
    def _core(z, w, mu, s):
        """(core(z), log core'(z)): core = z + Σ_k w_k s_k (σ(v_k) − ½), v_k = (z − μ_k)/s_k; the slope
        1 + Σ w_k σ'(v_k) lies in (δ, 2 − δ) because σ' = σ(v)σ(−v) ≤ 1/4 and Σ|w_k| < 4(1 − δ)."""
        v = (z[:, None] - mu) / s
        sig = jax.nn.sigmoid(v)
        core = z + jnp.sum(w * s * (sig - 0.5), axis=1)
        return core, jnp.log1p(jnp.sum(w * sig * jax.nn.sigmoid(-v), axis=1))

    def __call__(self, z: Float[Array, "c h w"], h: Float[Array, "f h w"]) -> tuple[Float[Array, "c h w"], Float[Array, ""]]:
        tmask, a, b, w, mu, s = self._params(z, h)
        core, log_slope = self._core(z, w, mu, s)
        y = jnp.exp(a) * core + b
        return jnp.where(tmask, y, z), jnp.sum(jnp.where(tmask, a + log_slope, 0.0))

    def inverse(self, y: Float[Array, "c h w"], h: Float[Array, "f h w"]) -> tuple[Float[Array, "c h w"], Float[Array, ""]]:
        """(z, log-det of the forward map at z) with ``self(z, h)[0] == y``: the untransformed half
        fixes the parameters; core(z) = (y − b)e^{−a} is solved by bisection on
        [c − M, c + M], M = Σ|w_k| s_k/2 ≥ |core(z) − z| (to float resolution)."""
        tmask, a, b, w, mu, s = self._params(y, h)
        target = (y - b) * jnp.exp(-a)
        m = 0.5 * jnp.sum(jnp.abs(w) * s, axis=1) + 1e-3 * (1.0 + jnp.abs(target))
        lo, hi = target - m, target + m

        def body(_, bounds):
            lo_, hi_ = bounds
            mid = 0.5 * (lo_ + hi_)
            below = self._core(mid, w, mu, s)[0] < target
            return jnp.where(below, mid, lo_), jnp.where(below, hi_, mid)

        lo, hi = jax.lax.fori_loop(0, 64, body, (lo, hi))
        z_t = 0.5 * (lo + hi)
        z = jnp.where(tmask, z_t, y)
        _, log_slope = self._core(z, w, mu, s)
        return z, jnp.sum(jnp.where(tmask, a + log_slope, 0.0))


@eqx.filter_jit
def _make_parts(image_shape, hidden, n_layers, n_components, delta, key):
    """The conditioning net and the couplings, initialised in one compiled call (dozens of eager
    initialisers would each compile separately)."""
    keys = jax.random.split(key, n_layers + 1)
    cond = _CondNet(image_shape[0], hidden, key=keys[0])
    mix = image_shape[0] > 1
    couplings = tuple(
        _Coupling(image_shape, hidden, n_components, parity=i % 2, channel_mix=mix and (i // 2) % 2 == 1,
                  delta=delta, key=keys[i + 1])
        for i in range(n_layers)
    )
    return cond, couplings


class FlowDequantizer(eqx.Module):
    """Conditional flow q(u | k) on the unit cube (Ho et al. 2019 §3.1; Song et al. 2021 §5).

    ε ~ Logistic(0, 1)^(C×H×W) → ``n_layers`` coupling layers conditioned on h(k) (checkerboard
    masks of alternating parity; from the third layer on also alternating along channels when C > 1)
    → u = σ(z). log q(u | k) = Σ[log σ'(ε) − log σ'(z)] − Σ log-dets, exact. Exactly uniform at
    initialisation (see the module docstring). One example per call; vmap for a batch, or use
    :func:`dequantize_variational`. ``centered``: the score model's data are 2(k + u)/256 − 1
    (True) or (k + u)/256.
    """

    cond: _CondNet
    couplings: tuple[_Coupling, ...]
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    hidden: int = eqx.field(static=True)
    n_layers: int = eqx.field(static=True)
    n_components: int = eqx.field(static=True)
    delta: float = eqx.field(static=True)
    centered: bool = eqx.field(static=True)

    def __init__(self, image_shape, *, hidden: int = 16, n_layers: int = 4, n_components: int = 4,
                 delta: float = 0.05, centered: bool = True, key: PRNGKeyArray):
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) with positive sizes; got {image_shape}.")
        if hidden < 1 or n_layers < 1 or n_components < 1:
            raise ValueError(f"hidden, n_layers and n_components must be positive; got {hidden}, {n_layers}, {n_components}.")
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta (the smallest slope factor of a coupling) must lie in (0, 1); got {delta}.")
        self.cond, self.couplings = _make_parts(image_shape, int(hidden), int(n_layers), int(n_components),
                                                float(delta), key)
        self.image_shape = image_shape
        self.hidden, self.n_layers, self.n_components = int(hidden), int(n_layers), int(n_components)
        self.delta, self.centered = float(delta), bool(centered)

    def hyperparameters(self) -> dict:
        return dict(image_shape=list(self.image_shape), hidden=self.hidden, n_layers=self.n_layers,
                    n_components=self.n_components, delta=self.delta, centered=self.centered)

    def __call__(self, k: Float[Array, "c h w"], eps: Float[Array, "c h w"]) -> tuple[Float[Array, "c h w"], Float[Array, ""]]:
        """(u, log q(u | k)) for ONE example: ``k`` the pixel values as floats (0..255), ``eps`` the
        standard-logistic base noise. u = σ(z) ∈ (0, 1) (float32 rounds to 1 for z ≳ 17)."""
        k = k.astype(F32)
        eps = eps.astype(F32)
        h = self.cond(dequantize_with(k, 0.5, centered=True))  # the centred image at the bins' centres
        z = eps
        log_det = jnp.zeros((), F32)
        for layer in self.couplings:
            z, ld = layer(z, h)
            log_det = log_det + ld
        log_q = jnp.sum(_log_logistic_pdf(eps) - _log_logistic_pdf(z)) - log_det
        return jax.nn.sigmoid(z), log_q

    def log_prob(self, k: Float[Array, "c h w"], u: Float[Array, "c h w"]) -> Float[Array, ""]:
        """log q(u | k) for ONE example at a given u ∈ (0, 1)^D, by inverting the flow (each coupling
        by bisection, to float32 resolution; logit(u) loses precision for u within ~1e-7 of 1 and is
        infinite at u = 0 or 1 exactly, where float32 rounds σ(z) for |z| ≳ 17 on the sampling path). The
        sampling path :meth:`__call__` does not need it; it serves checks (e.g. ∫ q du = 1)."""
        k = k.astype(F32)
        u = u.astype(F32)
        h = self.cond(dequantize_with(k, 0.5, centered=True))
        z_out = jnp.log(u) - jnp.log1p(-u)
        z = z_out
        log_det = jnp.zeros((), F32)
        for layer in reversed(self.couplings):
            z, ld = layer.inverse(z, h)
            log_det = log_det + ld
        return jnp.sum(_log_logistic_pdf(z) - _log_logistic_pdf(z_out)) - log_det


# --- batch API ------------------------------------------------------------------------------------


def _scale(centered: bool) -> float:
    return 2.0 if centered else 1.0


@eqx.filter_jit
def _apply(deq: FlowDequantizer, k: UInt8[Array, "n c h w"], eps: Float[Array, "n c h w"]):
    u, log_q = jax.vmap(deq)(k.astype(F32), eps)
    return dequantize_with(k, u, centered=deq.centered), log_q


def dequantize_variational(
    deq: FlowDequantizer, images_uint8: UInt8[ArrayLike, "N C H W"], key: PRNGKeyArray
) -> tuple[Float[Array, "N C H W"], Float[Array, " N"]]:
    """Variational dequantisation (Ho et al. 2019 §3.1; Song et al. 2021 §5): u ~ q(·|k) and
    x = 2(k + u)/256 − 1 (``deq.centered``; else (k + u)/256), with log q(u | k) in nats (density of u
    on the unit cube), both float32. The bound on −log P(k) in bits/dim is then
    ``numerics.likelihood.bits_per_dim(log p_x(x) − log_q, D, data_scale=2)`` (data_scale 1 when not
    centred); at initialisation log_q ≡ 0 and x is uniformly dequantised."""
    check_images(images_uint8, deq.image_shape)
    k = jnp.asarray(images_uint8)
    eps = jax.random.logistic(key, k.shape, dtype=F32)
    return _apply(deq, k, eps)


def dequantization_bound_terms(
    model, sde: numerics.SDE, deq: FlowDequantizer | None, k: UInt8[Array, "n c h w"], eps_base: Float[Array, "n c h w"],
    t: Float[Array, " n"], eps_t: Float[Array, "n c h w"], eps_0: Float[Array, "n c h w"],
) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """(B(x) + log q(u|k), log q) per example at given draws, in nats, float32: x from u = σ(ε) through
    the flow (``deq``), or uniformly dequantised (u = σ(``eps_base``), log q = 0) when ``deq`` is None;
    B is one unbiased draw of Song et al.'s ε-offset bound (training.evaluate.eps_offset_bound_terms,
    likelihood weighting with importance-sampled t: pass t ~ p(t) ∝ g²/σ²)."""
    from training.evaluate import eps_offset_bound_terms

    if deq is None:
        u = jax.nn.sigmoid(eps_base.astype(F32))
        x = dequantize_with(k, u, centered=True)  # centred: the caller checks the model's convention
        log_q = jnp.zeros((k.shape[0],), F32)
    else:
        u, log_q = jax.vmap(deq)(k.astype(F32), eps_base)
        x = dequantize_with(k, u, centered=deq.centered)
    # x is finite for uint8 k and finite flow parameters; the training loop checks its objective itself
    b = eps_offset_bound_terms(model, sde, x, t.astype(F32), eps_t.astype(F32), eps_0.astype(F32), weighting="g2_is",
                               check_finite=False).total
    return b.astype(F32) + log_q, log_q


def _draws(sde, key, shape, n, stratum=None, n_strata=None):
    """Base logistic noise, t ~ p_IS stratified (over the batch, or over draws when ``stratum``), ε_t, ε_0."""
    k_b, k_t, k_p, k_e, k_0 = jax.random.split(key, 5)
    eps_base = jax.random.logistic(k_b, shape, dtype=F32)
    if stratum is None:  # stratified over the batch, in random order
        u = (jax.random.permutation(k_p, n).astype(F32) + jax.random.uniform(k_t, (n,), F32)) / n
    else:
        u = (stratum + jax.random.uniform(k_t, (n,), F32)) / n_strata
    t = sde.importance_inverse_cdf(u, sde.t_min).astype(F32)
    eps_t = jax.random.normal(k_e, shape, F32)
    eps_0 = jax.random.normal(k_0, shape, F32)
    return eps_base, t, eps_t, eps_0


# --- training -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _optimizer(grad_clip: float) -> optax.GradientTransformation:
    """Global-norm clipping and Adam's scaling; the learning rate is applied in the step (a traced
    value, so changing it does not recompile). Cached so that repeated runs share compiled steps."""
    parts = [optax.clip_by_global_norm(grad_clip)] if grad_clip > 0 else []
    return optax.chain(*parts, optax.scale_by_adam())


@eqx.filter_jit
def _train_step(params, static, opt_state, model, sde, k, key, lr, tx):
    n = k.shape[0]

    def loss(p):
        deq = eqx.combine(p, static)
        eps_base, t, eps_t, eps_0 = _draws(sde, key, k.shape, n)
        per, log_q = dequantization_bound_terms(model, sde, deq, k, eps_base, t, eps_t, eps_0)
        return jnp.mean(per), (per, log_q)

    (val, (per, log_q)), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    updates = jax.tree.map(lambda g: (-lr * g).astype(g.dtype), updates)
    params = optax.apply_updates(params, updates)
    metrics = {
        "objective": val,
        "objective_se": jnp.std(per) / jnp.sqrt(jnp.asarray(n, F32)),
        "mean_log_q": jnp.mean(log_q),
        "grad_norm": optax.tree.norm(grads),
        "state_finite": all_finite((params, opt_state)),  # after the update: what a checkpoint would save
    }
    return params, opt_state, {k_: v.astype(F32) for k_, v in metrics.items()}


@dataclasses.dataclass
class DequantTrainResult:
    """The trained flow, its optimiser state, the number of steps done, and per-``log_every`` history
    records (the window's first and last step, objective in nats and bits/dim with standard errors over
    the window's batches)."""

    dequantizer: FlowDequantizer
    opt_state: Any
    step: int
    history: list[dict]


def _check_window(window: list[dict], first_step: int) -> None:
    """Raise FloatingPointError if a step of ``window`` (the metrics of steps ``first_step + 1``, …)
    had a non-finite objective or gradient norm, or left non-finite parameters or Adam state. Runs at
    every log step and before every checkpoint, so no saved dequantiser holds a non-finite value."""
    for i, m in enumerate(window):
        objective, gnorm = float(m["objective"]), float(m["grad_norm"])
        if not (math.isfinite(objective) and math.isfinite(gnorm)):
            what = f"objective ({objective}) or gradient norm ({gnorm})"
        elif float(m["state_finite"]) != 1.0:
            what = "parameters or optimiser state after the update"
        else:
            continue
        raise FloatingPointError(f"non-finite dequantiser {what} at step {first_step + i + 1}; stopping (the state "
                                 "after it was not saved; the last saved dequantiser is intact). Lower --lr.")


def train_dequantizer(
    model,
    sde: numerics.SDE,
    images_uint8: UInt8[ArrayLike, "N C H W"],
    key: PRNGKeyArray,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    grad_clip: float = 1.0,
    seed: int = 0,
    hidden: int = 16,
    n_layers: int = 4,
    n_components: int = 4,
    centered: bool = True,
    init: FlowDequantizer | None = None,
    opt_state: Any = None,
    start_step: int = 0,
    log_every: int = 50,
    progress: bool = True,
    checkpoint: Any = None,
    checkpoint_every: int = 0,
) -> DequantTrainResult:
    """Fit q(u | k) to the frozen score model ``model`` (an :class:`training.evaluate.EpsModel`) by
    minimising E_q[B(x(u)) + log q(u | k)] (Song et al. 2021 §5; THEORY.md §2.9), B the ε-offset bound.

    Each step: a batch of ``batch_size`` images (data order a pure function of (``seed``, step), as in
    training.data.ImageStream), one draw per image of the base noise, t ~ p_IS (stratified over the
    batch), ε_t and ε_0; gradients of the batch mean with respect to the flow's parameters only
    (the score network's parameters are constants; gradients pass through x into it); clipping at
    global norm ``grad_clip`` and Adam with learning rate ``lr``. Everything in float32. The step key
    is ``fold_in(key, step)``, so a run continued from (``init``, ``opt_state``, ``start_step``) repeats
    an uninterrupted one. ``checkpoint(result)`` is called every ``checkpoint_every`` steps (0: only
    at the end) and at the end; every step's objective, gradient norm, and parameters and Adam state
    after its update are checked finite at each log step (every ``log_every``) and before every
    checkpoint (FloatingPointError otherwise), so no checkpoint holds a non-finite flow. The objective
    is reported in bits/dim (:func:`training.evaluate.to_bits_per_dim`, data_scale 2 when centred).
    """
    from training.data import ImageDataset, ImageStream
    from training.evaluate import Estimate, to_bits_per_dim

    images = np.asarray(check_images(images_uint8, None if init is None else init.image_shape))
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be ≥ 0 and batch_size ≥ 1; got steps={steps}, batch_size={batch_size}.")
    if log_every < 1 or checkpoint_every < 0:
        raise ValueError(f"log_every must be ≥ 1 and checkpoint_every ≥ 0 (0 = only at the end); got "
                         f"log_every={log_every}, checkpoint_every={checkpoint_every}.")
    if images.shape[0] < batch_size:
        raise ValueError(f"images_uint8 holds {images.shape[0]} images, fewer than one batch of {batch_size}.")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number; got {lr}.")
    dims = int(np.prod(images.shape[1:]))
    deq = init if init is not None else FlowDequantizer(
        images.shape[1:], hidden=hidden, n_layers=n_layers, n_components=n_components, centered=centered,
        key=jax.random.fold_in(key, 2**31 - 1))
    params, static = eqx.partition(deq, eqx.is_inexact_array)
    tx = _optimizer(float(grad_clip))
    if opt_state is None:
        opt_state = tx.init(params)
    # committed like the step's outputs, so that the second step does not compile again
    params, opt_state = jax.device_put((params, opt_state), jax.devices()[0])
    stream = ImageStream(ImageDataset(images, np.zeros(images.shape[0], np.int64)), batch_size, seed=seed)
    lr_arr = jnp.asarray(lr, F32)

    pbar = None
    if progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=steps, initial=start_step, desc="dequantiser", dynamic_ncols=True, file=sys.stderr)
    history: list[dict] = []
    window: list[dict] = []
    step = start_step
    t0 = time.perf_counter()
    try:
        for step in range(start_step, steps):
            k = jnp.asarray(stream.host_batch(step))
            params, opt_state, metrics = _train_step(params, static, opt_state, model, sde, k,
                                                     jax.random.fold_in(key, step), lr_arr, tx)
            window.append(metrics)
            done = step + 1
            if pbar is not None:
                pbar.update(1)
            if done % log_every == 0 or done == steps:
                _check_window(window, done - len(window))
                vals = np.array([float(m["objective"]) for m in window])
                se = float(np.sqrt(np.mean([float(m["objective_se"]) ** 2 for m in window]) / len(window)))
                bpd = to_bits_per_dim(Estimate(np.array([vals.mean()]), np.array([se])), dims,
                                      data_scale=_scale(deq.centered))
                rec = {
                    "step": done,
                    "first_step": done - len(window) + 1,  # the window: steps first_step … step
                    "objective_nats": float(vals.mean()),
                    "objective_se_nats": se,
                    "objective_bpd": float(bpd.values[0]),
                    "objective_se_bpd": float(bpd.stderr[0]),
                    "mean_log_q": float(np.mean([float(m["mean_log_q"]) for m in window])),
                    "grad_norm": float(window[-1]["grad_norm"]),
                    "steps_per_s": len(window) / (time.perf_counter() - t0),
                }
                history.append(rec)
                window, t0 = [], time.perf_counter()
                if pbar is not None:
                    pbar.set_postfix(bpd=f"{rec['objective_bpd']:.4f}", log_q=f"{rec['mean_log_q']:.3g}")
            if checkpoint is not None and checkpoint_every > 0 and done % checkpoint_every == 0 and done != steps:
                _check_window(window, done - len(window))
                checkpoint(DequantTrainResult(eqx.combine(params, static), opt_state, done, history))
        step = max(steps, start_step)
    finally:
        if pbar is not None:
            pbar.close()
    result = DequantTrainResult(eqx.combine(params, static), opt_state, step, history)
    if checkpoint is not None:
        checkpoint(result)
    return result


# --- paired evaluation ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BoundComparison:
    """Bits/dim bounds on −log₂ P(k)/D per image, with variational (``variational``) and uniform
    (``uniform``) dequantisation, and ``difference`` = variational − uniform, all
    :class:`training.evaluate.Estimate` (per-image means over draws with their standard errors)."""

    variational: Any
    uniform: Any
    difference: Any

    def __str__(self) -> str:
        return (f"variational {self.variational}; uniform {self.uniform}; "
                f"difference {self.difference.mean:+.4f} ± {self.difference.se:.4f} bits/dim")


@eqx.filter_jit
def _paired_draw(model, sde, deq, k, key, stratum, n_strata):
    eps_base, t, eps_t, eps_0 = _draws(sde, key, k.shape, k.shape[0], stratum, n_strata)
    vd, _ = dequantization_bound_terms(model, sde, deq, k, eps_base, t, eps_t, eps_0)
    un, _ = dequantization_bound_terms(model, sde, None, k, eps_base, t, eps_t, eps_0)
    return vd, un


def compare_dequantization(
    model, sde: numerics.SDE, deq: FlowDequantizer, images_uint8: UInt8[ArrayLike, "N C H W"], key: PRNGKeyArray,
    *, n_draws: int = 8, batch_size: int | None = None,
) -> BoundComparison:
    """The ε-offset bound on −log₂ P(k)/D with variational and with uniform dequantisation (THEORY.md
    §2.9) on the same images with common random numbers: per draw the same base logistic noise ε
    (uniform: u = σ(ε); variational: u = flow(ε)), the same t ~ p_IS (stratified over the
    ``n_draws`` draws) and the same ε_t, ε_0. Per-image standard errors are over draws."""
    from training.evaluate import Estimate

    if not deq.centered:
        raise ValueError("compare_dequantization assumes centred data (x = 2(k + u)/256 − 1); deq.centered is False.")
    if n_draws < 2:
        raise ValueError(f"n_draws must be at least 2 (for a per-image standard error); got {n_draws}.")
    images = np.asarray(check_images(images_uint8, deq.image_shape))
    n = images.shape[0]
    dims = int(np.prod(images.shape[1:]))
    bs = n if batch_size is None else int(batch_size)
    vd = np.zeros((n, n_draws))
    un = np.zeros((n, n_draws))
    for j in range(n_draws):
        kj = jax.random.fold_in(key, j)
        for s in range(0, n, bs):
            k = jnp.asarray(images[s : s + bs])
            a, b = _paired_draw(model, sde, deq, k, jax.random.fold_in(kj, s), jnp.asarray(j, F32),
                                jnp.asarray(n_draws, F32))
            vd[s : s + bs, j] = np.asarray(a, np.float64)
            un[s : s + bs, j] = np.asarray(b, np.float64)
    # each draw in bits/dim (the bound B + log q on −log p_x, converted by numerics' bits_per_dim), then
    # per-image means and standard errors over the draws; the difference is paired draw by draw
    bpd_vd = np.asarray(bits_per_dim(-vd, dims, data_scale=_scale(deq.centered)), np.float64)
    bpd_un = np.asarray(bits_per_dim(-un, dims, data_scale=_scale(deq.centered)), np.float64)
    return BoundComparison(Estimate.from_draws(bpd_vd, "bits/dim"), Estimate.from_draws(bpd_un, "bits/dim"),
                           Estimate.from_draws(bpd_vd - bpd_un, "bits/dim"))


# --- saving and loading ---------------------------------------------------------------------------


def _dir(workdir) -> str:
    return os.path.join(os.fspath(workdir), SUBDIR)


_TMP_PREFIX = f".{SUBDIR}.tmp-"  # the temporary folder of a save in flight (or cut short by a kill)
LOCK_NAME = f".{SUBDIR}.lock"  # held by the process that writes <workdir>/dequantizer/


def _lock(workdir: str):
    """The lock of ``<workdir>/dequantizer/`` (training.fileio.lock_directory): one writer at a time.
    Not the trainer's lock: a dequantiser may be fitted while the score model goes on training."""
    return lock_directory(workdir, LOCK_NAME, what="dequantiser training (python -m training dequant)",
                          fix=f"wait for it to end, or stop it and continue with python -m training dequant "
                              f"--workdir {workdir} --resume.")


def _stale_temporaries(workdir: str) -> list[str]:
    """The temporary folders of saves in ``workdir`` (``.dequantizer.tmp-*``)."""
    if not os.path.isdir(workdir):
        return []
    return [os.path.join(workdir, n) for n in sorted(os.listdir(workdir)) if n.startswith(_TMP_PREFIX)]


def _remove_stale_temporaries(workdir: str) -> None:
    """Remove the temporary folders of saves that a kill cut short. Call only while holding
    :func:`_lock` (then no save is in flight)."""
    for path in _stale_temporaries(workdir):
        shutil.rmtree(path, ignore_errors=True)


def _write_version(workdir: str, deq: FlowDequantizer, opt_state: Any, cfg: dict) -> str:
    """A complete new version in a temporary folder of ``workdir``, every file and the folder fsynced
    (so the renames that publish it cannot publish lost data); returns the folder."""
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=workdir)
    try:
        files = {"flow.eqx": deq, **({"opt_state.eqx": opt_state} if opt_state is not None else {})}
        for name, tree in files.items():
            eqx.tree_serialise_leaves(os.path.join(tmp, name), tree)
            fsync_file(os.path.join(tmp, name))
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
        fsync_file(os.path.join(tmp, "config.json"))
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def save_dequantizer(workdir: str | os.PathLike, deq: FlowDequantizer, *, opt_state: Any = None,
                     meta: dict | None = None) -> str:
    """Write ``<workdir>/dequantizer/``: ``config.json`` (hyper-parameters and ``meta``), ``flow.eqx``
    and, if given, ``opt_state.eqx``. A complete version exists at every instant, so a crash, a kill
    or a full disk at any point leaves the previous or the new one, which :func:`load_dequantizer`
    finds:

    1. the new version is written to a temporary folder ``.dequantizer.tmp-*`` and fsynced;
    2. if ``dequantizer/`` exists, it is renamed to ``dequantizer.old`` (a ``.old`` left by an
       interrupted save is removed first: ``dequantizer/`` is complete then); if it does not, a
       ``.old`` is the only copy and stays;
    3. the temporary folder is renamed to ``dequantizer/``; only then is ``dequantizer.old`` removed.

    Holds the dequantiser's lock (``<workdir>/.dequantizer.lock``; a run that holds it already passes;
    :class:`training.fileio.DirectoryBusyError` if another process does) and first removes the
    temporary folders of saves a kill cut short."""
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    final = _dir(workdir)
    old = final + ".old"
    cfg = {"format": _FORMAT, **deq.hyperparameters(), **(meta or {})}
    with _lock(workdir):
        _remove_stale_temporaries(workdir)
        tmp = _write_version(workdir, deq, opt_state, cfg)
        try:
            if os.path.isdir(final):
                if os.path.exists(old):
                    shutil.rmtree(old)
                os.rename(final, old)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(workdir)
        shutil.rmtree(old, ignore_errors=True)
    return final


def _read_config(path: str) -> dict:
    """The ``config.json`` of a saved dequantiser folder ``path`` (training.fileio.read_json)."""
    cfg = read_json(os.path.join(path, "config.json"),
                    fix=f"remove {path} and fit the dequantiser again (python -m training dequant).")
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        found = cfg.get("format") if isinstance(cfg, dict) else type(cfg).__name__
        raise ValueError(f"{path}: unknown dequantiser format {found!r} (expected {_FORMAT}); remove it and fit "
                         "the dequantiser again (python -m training dequant).")
    return cfg


def _skeleton(cfg: dict) -> FlowDequantizer:
    """The structure of a saved flow, with shape/dtype placeholders for its arrays (nothing computed)."""
    return eqx.filter_eval_shape(
        lambda key: FlowDequantizer(tuple(cfg["image_shape"]), hidden=int(cfg["hidden"]), n_layers=int(cfg["n_layers"]),
                                    n_components=int(cfg["n_components"]), delta=float(cfg["delta"]),
                                    centered=bool(cfg["centered"]), key=key),
        jax.random.key(0))


def _is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and os.path.isfile(os.path.join(path, "flow.eqx"))


def _existing(workdir) -> str | None:
    """The folder of the saved dequantiser: ``dequantizer/``, or ``dequantizer.old`` where a save was
    cut short between its renames; None if there is none. ``dequantizer/`` is looked at again last: a
    save running beside may have published it (and removed ``.old``) between the first two looks."""
    final = _dir(workdir)
    for p in (final, final + ".old", final):
        if _is_complete(p):
            return p
    return None


def _clean_up_after_a_kill(workdir: str) -> None:
    """Remove the temporary folders of saves a kill cut short, if no process holds the dequantiser's
    lock (a live run's save may be in flight) and the work directory can be written; else nothing."""
    if not _stale_temporaries(workdir):  # the usual case: no lock file is created by a reader
        return
    with contextlib.suppress(DirectoryBusyError, OSError), _lock(workdir):
        _remove_stale_temporaries(workdir)


def load_dequantizer(workdir: str | os.PathLike, *, with_config: bool = False):
    """The :class:`FlowDequantizer` saved in ``<workdir>/dequantizer/`` (by ``python -m training dequant``
    or :func:`save_dequantizer`; ``dequantizer.old`` where a save was cut short between its renames),
    or None if the work directory has none; with ``with_config``, (flow, its config.json) — which
    records, e.g., the score checkpoint it was fitted to (``score_step``). Removes the temporary folders
    of saves a kill cut short when no dequantiser run is live there. A damaged save raises ValueError
    naming the file and the fix."""
    _clean_up_after_a_kill(os.fspath(workdir))
    path = _existing(workdir)
    if path is None:
        return None
    cfg = _read_config(path)
    flow_path = os.path.join(path, "flow.eqx")
    try:
        deq = eqx.tree_deserialise_leaves(flow_path, _skeleton(cfg))
    except (OSError, EOFError, RuntimeError, ValueError) as e:  # e.g. a file cut short or overwritten by hand
        raise ValueError(f"{flow_path} cannot be read ({type(e).__name__}: {e}); remove {path} and fit the "
                         "dequantiser again (python -m training dequant).") from e
    return (deq, cfg) if with_config else deq


def _load_state(workdir, grad_clip: float):
    """(flow, opt_state or None, config dict) of a saved dequantiser, for --resume."""
    path = _existing(workdir)
    if path is None:
        return None
    cfg = _read_config(path)
    deq = eqx.tree_deserialise_leaves(os.path.join(path, "flow.eqx"), _skeleton(cfg))
    opt_state = None
    if os.path.isfile(os.path.join(path, "opt_state.eqx")):
        like = _optimizer(grad_clip).init(eqx.filter(deq, eqx.is_inexact_array))
        opt_state = eqx.tree_deserialise_leaves(os.path.join(path, "opt_state.eqx"), like)
    return deq, opt_state, cfg


# --- command line ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="training work directory (config.json + checkpoints/); "
                   "the dequantiser is saved to WORKDIR/dequantizer/")
    p.add_argument("--steps", type=int, default=2000, help="total training steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="global-norm gradient clipping, 0 = off (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the flow's initialisation, data order and noise")
    p.add_argument("--hidden", type=int, default=16, help="channels of the flow's conv nets (default 16)")
    p.add_argument("--layers", type=int, default=4, help="coupling layers (default 4)")
    p.add_argument("--components", type=int, default=4, help="logistic components per coupling (default 4)")
    p.add_argument("--step", type=int, default=None, help="score-model checkpoint step (default: the latest)")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 archive or folder (default: the training config's)")
    p.add_argument("--num-images", type=int, default=None, help="use at most this many training images")
    p.add_argument("--eval-images", type=int, default=256,
                   help="held-out images for the final paired comparison of the variational and uniform bounds: "
                        "from the test split if the score model trained on 'train' (0 = none; default 256)")
    p.add_argument("--eval-draws", type=int, default=4, help="Monte Carlo draws per held-out image (default 4)")
    p.add_argument("--ckpt-every", type=int, default=500, help="save every N steps (default 500)")
    p.add_argument("--log-every", type=int, default=50, help="history record every N steps (default 50)")
    p.add_argument("--resume", action="store_true", help="continue from WORKDIR/dequantizer/")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _images_of(cfg, data_dir: str | None, split: str | None = None) -> np.ndarray:
    """The images of ``split`` (default: the one the score model was trained on) of the config's data."""
    from training.data import load_cifar10, load_digits

    name, split = cfg.data.name, split or cfg.data.split
    if name == "digits":
        return load_digits(split).images
    if name == "cifar10":
        path = data_dir or cfg.data.data_dir
        if not path:
            raise ValueError("the model was trained on CIFAR-10: pass --data-dir (cifar-10-python.tar.gz or its folder).")
        return load_cifar10(path, split).images
    raise ValueError(f"variational dequantisation needs 8-bit image data; the work directory's model was trained "
                     f"on {name!r} data.")


def _split(n: int, n_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, held-out indices): a fixed permutation of the data set."""
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    return np.sort(perm[n_eval:]), np.sort(perm[:n_eval])


def _check_args(args) -> None:
    """ValueError naming the first command-line flag with a value out of range, and the fix."""

    def need(flag: str, ok: bool, must: str, value) -> None:
        if not ok:
            raise ValueError(f"{flag} must be {must} (got {value!r}).")

    need("--steps", args.steps >= 0, "an integer >= 0 (the total number of training steps)", args.steps)
    need("--batch-size", args.batch_size >= 1, "an integer >= 1 (images per step)", args.batch_size)
    need("--lr", math.isfinite(args.lr) and args.lr > 0, "a finite number > 0 (Adam's learning rate, e.g. 1e-3)", args.lr)
    need("--grad-clip", math.isfinite(args.grad_clip) and args.grad_clip >= 0,
         "a finite number >= 0 (the global norm to clip gradients at; 0 = off)", args.grad_clip)
    need("--seed", args.seed >= 0, "an integer >= 0", args.seed)
    for flag, v in (("--hidden", args.hidden), ("--layers", args.layers), ("--components", args.components)):
        need(flag, v >= 1, "an integer >= 1", v)
    need("--num-images", args.num_images is None or args.num_images >= 1, "an integer >= 1 (or left out for all)",
         args.num_images)
    need("--eval-images", args.eval_images >= 0, "an integer >= 0 (0 = no held-out comparison)", args.eval_images)
    need("--eval-draws", args.eval_draws >= 2, "an integer >= 2 (draws per held-out image, for its standard error)",
         args.eval_draws)
    need("--ckpt-every", args.ckpt_every >= 1, "an integer >= 1 (save the dequantiser every N steps, so that a "
         "killed run loses at most N steps)", args.ckpt_every)
    need("--log-every", args.log_every >= 1, "an integer >= 1 (a history record every N steps)", args.log_every)


_IDENTITY = ("batch_size", "seed", "lr", "grad_clip", "hidden", "layers", "components", "eval_images", "num_images")


def _resume_score_step(workdir: str, prev: str, saved: dict, step: int | None) -> int:
    """The score checkpoint a ``--resume`` continues against: the one the saved dequantiser was fitted
    to (its config.json records it), which must still exist; ``--step`` may only repeat it. Errors name
    the step, the checkpoints kept and the fix (keep-N may have removed the step since)."""
    from training.evaluate import checkpoint_steps

    fitted = saved.get("score_step")
    if not isinstance(fitted, int):
        raise ValueError(f"--resume: {prev}/config.json does not record the score checkpoint (score_step) the "
                         f"dequantiser was fitted to, so it cannot be continued; move {_dir(workdir)} away and fit a "
                         "new dequantiser.")
    if step is not None and step != fitted:
        raise ValueError(f"--resume --step {step}: the saved dequantiser in {prev} was fitted to score checkpoint "
                         f"step {fitted}; leave --step out to continue it, or move {_dir(workdir)} away to fit a new "
                         f"dequantiser to step {step}.")
    steps = checkpoint_steps(workdir)
    if fitted not in steps:
        ck_dir = os.path.join(workdir, "checkpoints")
        raise ValueError(f"--resume: the saved dequantiser in {prev} was fitted to score checkpoint step {fitted}, "
                         f"which is no longer in {ck_dir} (train.keep removes old checkpoints as a run goes on); "
                         f"available steps: {steps}. Its fit cannot be continued against another checkpoint: restore "
                         f"step {fitted}, or move {_dir(workdir)} away and fit a new dequantiser with --step N, N one "
                         f"of {steps} (default the latest).")
    return fitted


def _check_score_model_data(workdir: str, now: str, data_dir: str | None) -> None:
    """ValueError unless the images of fingerprint ``now`` are those the score model trained on: the
    fingerprint its run recorded (``DIR/data.json``, :func:`training.train.saved_data_fingerprint`) must
    match. A run that predates the record is not checked."""
    from training.train import saved_data_fingerprint

    saved, path = saved_data_fingerprint(workdir)
    if saved is not None and now != saved:
        where = f"--data-dir {data_dir}" if data_dir else "the training config's data"
        raise ValueError(f"the images of {where} differ from those the score model in {workdir} was trained on "
                         f"(fingerprint {now}, recorded {saved} in {path}); the dequantiser would be fitted to other "
                         "data than the model's. Pass --data-dir with the data the model was trained on.")


def _check_resumed_images(prev: str, saved: dict, fingerprint: str, n: int, workdir: str) -> None:
    """ValueError unless a ``--resume`` trains on the images the saved dequantiser was fitted to: the
    fingerprint in its config.json (or, for a dequantiser saved before it was recorded, their number:
    before session 13 the images of the final comparison were held out of the training set)."""
    old_fp, old_n = saved.get("train_images"), saved.get("n_train_images")
    if (old_fp is not None and old_fp != fingerprint) or (old_fp is None and old_n is not None and old_n != n):
        was = f"fingerprint {old_fp}" if old_fp is not None else f"{old_n} images"
        now = f"fingerprint {fingerprint}" if old_fp is not None else f"{n} images"
        raise ValueError(f"--resume: the saved dequantiser in {prev} was trained on other images ({was}) than this "
                         f"run would train on ({now}); its fit cannot be continued on them. Move {_dir(workdir)} "
                         "away and fit a new dequantiser.")


@dataclasses.dataclass
class _Setup:
    """What :func:`run` prepared: the frozen score model, the data split, the state to start from
    (a resumed flow, its Adam state, step and history) and the metadata every save records."""

    workdir: str
    model: Any
    sde: Any
    images: np.ndarray
    tr_idx: np.ndarray
    eval_images: np.ndarray
    eval_source: str
    init: FlowDequantizer | None
    opt_state: Any
    start: int
    history: list
    meta: dict


def _prepare(args, workdir: str, held: contextlib.ExitStack) -> _Setup:
    """Check the command line and the work directory, take the dequantiser's lock into ``held`` (and
    remove the temporary folders of saves a kill cut short), and load the score model, the images and
    (``--resume``) the saved dequantiser; errors name the flag or file and the fix."""
    from training.evaluate import load_model, locate_checkpoint

    identity = {k: getattr(args, k) for k in _IDENTITY}
    _check_args(args)
    locate_checkpoint(workdir, args.step)  # a training work directory with that checkpoint, or a clear error
    held.enter_context(_lock(workdir))
    _remove_stale_temporaries(workdir)
    prev = _existing(workdir)
    saved: dict = {}
    score_step = args.step
    if prev is not None and not args.resume:
        raise FileExistsError(f"{_dir(workdir)} already exists; pass --resume to continue it, or remove it.")
    if prev is not None:
        saved = _read_config(prev)
        changed = sorted(k for k in _IDENTITY if saved.get("identity", {}).get(k) != identity[k])
        if changed:
            raise ValueError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in changed)} differ from the "
                             f"saved run in {prev} (only --steps, --log-every, --ckpt-every, --eval-draws and "
                             "--no-progress may change).")
        score_step = _resume_score_step(workdir, prev, saved, args.step)
    model, cfg, sde, score_step = load_model(workdir, score_step)
    images = _images_of(cfg, args.data_dir)
    images_fp = array_fingerprint(images)
    _check_score_model_data(workdir, images_fp, args.data_dir)
    if not cfg.data.centered:
        raise ValueError("the dequantiser assumes data centred to [-1, 1] (data.centered=true); this model was not.")
    if cfg.data.split == "train":  # held out from both models: the test split
        test = _images_of(cfg, args.data_dir, "test")
        n_eval = max(0, min(int(args.eval_images), test.shape[0]))
        tr_idx, ev_idx = np.arange(images.shape[0]), _split(test.shape[0], n_eval, args.seed)[1]
        eval_images, eval_source = test[ev_idx], "test split (seen by neither model)"
    else:  # the score model saw every image of its split: held out from the dequantiser only
        n_eval = max(0, min(int(args.eval_images), images.shape[0] // 2))
        tr_idx, ev_idx = _split(images.shape[0], n_eval, args.seed)
        eval_images = images[ev_idx]
        eval_source = f"split {cfg.data.split!r} the score model trained on (held out from the dequantiser only)"
    if args.num_images is not None:
        tr_idx = tr_idx[: int(args.num_images)]
    if len(tr_idx) < args.batch_size:
        raise ValueError(f"{len(tr_idx)} training images are fewer than one batch (--batch-size {args.batch_size}).")
    init = opt_state = None
    start = 0
    whole = np.array_equal(tr_idx, np.arange(images.shape[0]))  # the whole split: its fingerprint is at hand
    train_images = images_fp if whole else array_fingerprint(images[tr_idx])
    if prev is not None:
        _check_resumed_images(prev, saved, train_images, len(tr_idx), workdir)
        init, opt_state, _ = _load_state(workdir, float(args.grad_clip))
        start = int(saved.get("step", 0))
        print(f"resuming the dequantiser from step {start} (score checkpoint {score_step})", file=sys.stderr)
    meta = dict(score_step=score_step, steps=args.steps, n_train_images=int(len(tr_idx)), train_images=train_images,
                identity=identity)
    return _Setup(workdir, model, sde, images, tr_idx, eval_images, eval_source, init, opt_state, start,
                  list(saved.get("history", [])), meta)


def run(args) -> int:
    """``python -m training dequant`` (see the module docstring). Holds the dequantiser's lock
    (``<workdir>/.dequantizer.lock``) for the whole run. Exit status 2 for bad input (including another
    dequantiser run in the same work directory), 3 for a non-finite training step."""
    workdir = os.path.abspath(args.workdir)
    with contextlib.ExitStack() as held:
        try:
            setup = _prepare(args, workdir, held)
        except (ValueError, FileNotFoundError, FileExistsError, DirectoryBusyError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return _fit_and_compare(args, setup)


def _fit_and_compare(args, setup: _Setup) -> int:
    """Train the dequantiser from ``setup`` (saving as it goes), then compare the variational and
    uniform bounds on the held-out images; 0, or 3 for a non-finite step."""
    workdir, model, sde, images, start = setup.workdir, setup.model, setup.sde, setup.images, setup.start
    tr_idx, eval_images, n_eval = setup.tr_idx, setup.eval_images, len(setup.eval_images)
    init, opt_state, meta, old_history = setup.init, setup.opt_state, setup.meta, setup.history

    def checkpoint(res: DequantTrainResult):
        save_dequantizer(workdir, res.dequantizer, opt_state=res.opt_state,
                         meta={**meta, "step": res.step, "history": old_history + res.history})

    key = jax.random.key(args.seed)
    try:
        res = train_dequantizer(
            model, sde, images[tr_idx], key, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            grad_clip=args.grad_clip, seed=args.seed, hidden=args.hidden, n_layers=args.layers,
            n_components=args.components, centered=True, init=init, opt_state=opt_state, start_step=start,
            log_every=args.log_every, progress=not args.no_progress, checkpoint=checkpoint,
            checkpoint_every=args.ckpt_every)
    except FloatingPointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    last = res.history[-1] if res.history else None
    if last is not None:
        print(f"dequantiser step {res.step}: training objective {last['objective_bpd']:.4f} ± "
              f"{last['objective_se_bpd']:.4f} bits/dim (steps {last['first_step']}-{last['step']})")
    if n_eval > 0:
        cmp = compare_dequantization(model, sde, res.dequantizer, eval_images, jax.random.fold_in(key, 2**30),
                                     n_draws=int(args.eval_draws), batch_size=args.batch_size)
        print(f"held-out ({n_eval} images of the {setup.eval_source}; {int(args.eval_draws)} draws): {cmp}")
        path = _existing(workdir)
        saved_cfg = _read_config(path)
        saved_cfg["heldout"] = {
            "step": res.step, "n_images": n_eval, "images": setup.eval_source, "n_draws": int(args.eval_draws),
            "variational_bpd": cmp.variational.mean, "variational_se": cmp.variational.se,
            "uniform_bpd": cmp.uniform.mean, "uniform_se": cmp.uniform.se,
            "difference_bpd": cmp.difference.mean, "difference_se": cmp.difference.se,
        }
        write_atomic(os.path.join(path, "config.json"), json.dumps(saved_cfg, indent=2, sort_keys=True))
    print(f"saved to {_dir(workdir)}")
    return 0
