"""Variational Diffusion Models (Kingma, Salimans, Poole & Ho 2021): the VLB and a learned schedule.

THEORY.md §4. For data x (continuous, or 8-bit encoded as 2(x + ½)/256 − 1) and the variance-
preserving process of a monotone γ(t) = −log SNR(t) — any :class:`numerics.sde.LogSNRSDE` — the
negative VLB of VDM Eq. 11 is, per example,

    −VLB(x) = KL(q(z_T | x) ‖ π)                    prior loss           (:func:`prior_loss`)
            + E_{q(z_0|x)}[−log p(x | z_0)]         reconstruction loss  (Gaussian or discrete decoder)
            + L(x)                                   diffusion loss       (L_∞ or L_T)

with z_0 taken at ``sde.t_min`` and z_T at ``sde.T`` (VDM: 0 and 1). The model is the noise
prediction ε̂(z_t, t) for ONE example.

* Continuous time (VDM Eq. 17): L_∞ = ½ E_{t, ε}[γ'(t) ‖ε − ε̂‖²]. By THEORY.md §4.7 its
  per-t integrand equals the likelihood-weighted DSM term ½ (g²/σ²)‖ε − ε̂‖² of Song et al. 2021,
  so :func:`continuous_diffusion_loss` IS ``numerics.losses.dsm_loss_terms(..., "g2")`` — the one
  DSM implementation — whose value is (T − t_min)·½ γ'(t)‖ε − ε̂‖² for t ~ U[t_min, T] (γ' by
  forward-mode autodiff inside :class:`LogSNRSDE`).
* Discrete time (VDM Eq. 13, THEORY.md §4.3): L_T = (T/2) E_{i, ε}[expm1(γ(t_i) − γ(s_i)) ‖ε − ε̂(z_{t_i}; t_i)‖²]
  on the grid t_i = t_min + i h, s_i = t_i − h, h = (T_end − t_min)/T.
* Antithetic times (VDM code, THEORY.md §4.6): u_i = mod(u_0 + i/B, 1).

The learned schedule :class:`MonotoneGamma` is VDM's ``learnable_nnet`` with the paper's endpoint
rescaling, and :func:`variance_gradient_diffusion_loss` implements VDM App. I.2's variance-
minimising gradient for its interior parameters.

Dtype-generic: computes in the dtype of continuous ``x`` (or ``dtype`` for discrete data).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, Integer, PRNGKeyArray, PyTree, Shaped

from numerics.losses import check_choice, dsm_loss_terms
from numerics.sde import SDE, LogSNRSDE, bisect_increasing

__all__ = [
    "BisectionInverse",
    "MonotoneGamma",
    "VDMLoss",
    "antithetic_times",
    "check_discrete_data",
    "encode_discrete",
    "prior_loss",
    "gaussian_reconstruction_loss",
    "discrete_reconstruction_loss",
    "continuous_diffusion_loss",
    "discrete_diffusion_loss",
    "diffusion_loss",
    "scale_gradient",
    "schedule_interior_mask",
    "variance_gradient_diffusion_loss",
    "vdm_loss",
]


# --- schedules ---------------------------------------------------------------------------------------


class BisectionInverse(eqx.Module):
    """A monotone increasing schedule γ on its domain [0, 1] whose ``inverse`` is found by bisection.

    Subclasses implement ``__call__``. ``inverse(g)`` returns t ∈ [0, 1] with γ(t) = g (clamped to
    the ends when g is outside [γ(0), γ(1)]; :func:`numerics.sde.bisect_increasing`);
    :class:`numerics.sde.LogSNRSDE` uses it for ``inverse_log_snr`` and hence for importance sampling
    of t, and refuses an end time T beyond ``domain_end``.
    """

    domain_end: ClassVar[float] = 1.0

    @abc.abstractmethod
    def __call__(self, t):
        """γ(t)."""

    def inverse(self, gamma: Float[ArrayLike, "*g"], n_iter: int = 100) -> Float[Array, "*g"]:
        return bisect_increasing(self, gamma, 0.0, self.domain_end, n_iter)


ENDPOINT_MODES: tuple[str, ...] = ("learned", "fixed")


class MonotoneGamma(BisectionInverse):
    """VDM's learnable monotone schedule with exact endpoints (Kingma et al. 2021, §3.4 and App. H;
    code ``NoiseSchedule_NNet``, THEORY.md §4.6).

    The network (all weights through |·|, so increasing in t):

        raw(t) = b₁ + |w₁| t + (1/H) Σ_h |w₃,h| φ(|w₂,h| (2t − 1) + b₂,h),   φ(a) = 2(sigmoid(a) − ½)

    is rescaled so that the endpoints are exact (the paper's version; the public code's
    ``learnable_nnet`` is not rescaled — vdm issue #11):

        γ(t) = γ₀ + (γ₁ − γ₀) (raw(t) − raw(0)) / (raw(1) − raw(0)),   γ₁ − γ₀ = exp(log_gap) > 0.

    ``endpoints="learned"``: γ₀ and log_gap are parameters (trained on the whole VLB).
    ``endpoints="fixed"``: they are held by ``stop_gradient``. The *interior* parameters (w₁, b₁,
    w₂, b₂, w₃) change γ only between the endpoints (:meth:`interior_mask`); b₁ cancels.
    Strictly increasing as long as some |w| is non-zero. Use as ``LogSNRSDE(MonotoneGamma(...))``.
    """

    l1_weight: Float[Array, ""]
    l1_bias: Float[Array, ""]
    l2_weight: Float[Array, " H"]
    l2_bias: Float[Array, " H"]
    l3_weight: Float[Array, " H"]
    gamma_0: Float[Array, ""]
    log_gap: Float[Array, ""]
    endpoints: str = eqx.field(static=True)

    def __init__(
        self,
        gamma_min: float = -13.3,
        gamma_max: float = 5.0,
        *,
        n_features: int = 1024,
        endpoints: str = "learned",
        key: PRNGKeyArray,
        dtype=None,
    ):
        check_choice("endpoints", endpoints, ENDPOINT_MODES)
        if not (math.isfinite(gamma_min) and math.isfinite(gamma_max)) or gamma_max <= gamma_min:
            raise ValueError(f"need finite gamma_min < gamma_max; got gamma_min={gamma_min}, gamma_max={gamma_max}.")
        if isinstance(n_features, bool) or int(n_features) != n_features or n_features < 1:
            raise ValueError(f"n_features must be a positive integer; got {n_features!r}.")
        dtype = jnp.result_type(float) if dtype is None else dtype
        k2, k3 = jax.random.split(key)
        self.l1_weight = jnp.asarray(gamma_max - gamma_min, dtype)  # VDM's l1 initialisation
        self.l1_bias = jnp.asarray(gamma_min, dtype)
        self.l2_weight = jax.random.normal(k2, (int(n_features),), dtype)
        self.l2_bias = jnp.zeros((int(n_features),), dtype)
        self.l3_weight = jax.random.normal(k3, (int(n_features),), dtype)
        self.gamma_0 = jnp.asarray(gamma_min, dtype)
        self.log_gap = jnp.asarray(math.log(gamma_max - gamma_min), dtype)
        self.endpoints = endpoints

    def raw(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """The un-rescaled monotone network raw(t) (VDM's ``learnable_nnet`` form)."""
        t = jnp.asarray(t)
        h = jnp.abs(self.l2_weight) * (2 * t[..., None] - 1) + self.l2_bias
        phi = 2 * (jax.nn.sigmoid(h) - 0.5)
        return self.l1_bias + jnp.abs(self.l1_weight) * t + jnp.mean(jnp.abs(self.l3_weight) * phi, axis=-1)

    def normalised(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        """(raw(t) − raw(0))/(raw(1) − raw(0)): 0 at t = 0, 1 at t = 1, increasing."""
        r0, r1 = self.raw(0.0), self.raw(1.0)
        return (self.raw(t) - r0) / (r1 - r0)

    def _endpoints(self):
        g0, lg = self.gamma_0, self.log_gap
        if self.endpoints == "fixed":
            g0, lg = jax.lax.stop_gradient(g0), jax.lax.stop_gradient(lg)
        return g0, jnp.exp(lg)

    @property
    def gamma_1(self) -> Float[Array, ""]:
        g0, gap = self._endpoints()
        return g0 + gap

    def __call__(self, t: Float[ArrayLike, "*t"]) -> Float[Array, "*t"]:
        g0, gap = self._endpoints()
        return g0 + gap * self.normalised(t)

    def interior_mask(self) -> PyTree[bool]:
        """True on the parameters that shape γ between its endpoints (for the variance gradient)."""
        mask = jax.tree_util.tree_map(lambda _: True, self)
        return eqx.tree_at(lambda g: (g.gamma_0, g.log_gap), mask, (False, False))


# --- pieces of the VLB ---------------------------------------------------------------------------------


def antithetic_times(
    key: PRNGKeyArray, batch: int, *, t_min: float = 0.0, T: float = 1.0, dtype=None
) -> Float[Array, " batch"]:
    """t_i = t_min + (T − t_min)·mod(u₀ + i/B, 1), u₀ ~ U(0, 1) (VDM code; THEORY.md §4.6): each t_i is
    uniform and the batch is evenly spread, which lowers the variance of batch means."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    u0 = jax.random.uniform(key, (), dtype)
    u = jnp.mod(u0 + jnp.arange(batch, dtype=dtype) / batch, 1.0)
    return (t_min + (T - t_min) * u).astype(dtype)


def encode_discrete(x: Integer[ArrayLike, "*s"], vocab_size: int = 256, dtype=None) -> Float[Array, "*s"]:
    """k ∈ {0, …, vocab_size − 1} ↦ 2(k + ½)/vocab_size − 1 ∈ (−1, 1) (VDM ``encode``; THEORY.md §4.2)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    return (2 * (jnp.asarray(x).astype(dtype) + 0.5) / vocab_size - 1).astype(dtype)


def _flat_sum(a: Array) -> Array:
    return jnp.sum(a.reshape(a.shape[0], -1), axis=-1)


def prior_loss(sde: SDE, x: Float[Array, "batch *event"]) -> Float[Array, " batch"]:
    """KL(q(z_T | x) ‖ N(0, p² I)) = ½ Σ_i [(α_T² x_i² + σ_T²)/p² − 1 − log(σ_T²/p²)], p = ``sde.prior_std``
    (VDM's prior loss with p = 1; THEORY.md §4.2)."""
    T = jnp.asarray(sde.T, x.dtype)
    a2 = jnp.exp(2 * sde.log_mean_coeff(T)).astype(x.dtype)
    var = sde.variance(T).astype(x.dtype)
    p2 = jnp.asarray(sde.prior_std**2, x.dtype)
    per_dim = 0.5 * ((a2 * x**2 + var) / p2 - 1 - jnp.log(var / p2))
    return _flat_sum(per_dim)


def gaussian_reconstruction_loss(
    sde: SDE, x: Float[Array, "batch *event"], eps: Float[Array, "batch *event"]
) -> Float[Array, " batch"]:
    """−log N(x; z_0/α_0, (σ_0²/α_0²) I) at z_0 = α_0 x + σ_0 ε, t_0 = ``sde.t_min`` (continuous data;
    THEORY.md §4.2). Its mean over ε is (D/2)(1 + log 2π − log SNR(t_0))."""
    t0 = jnp.asarray(sde.t_min, x.dtype)
    alpha, sigma = sde.mean_coeff(t0).astype(x.dtype), sde.std(t0).astype(x.dtype)
    z0 = alpha * x + sigma * eps
    var = jnp.exp(-sde.log_snr(t0)).astype(x.dtype)  # σ_0²/α_0² = e^{γ_0}
    return _flat_sum(0.5 * (x - z0 / alpha) ** 2 / var + 0.5 * jnp.log(2 * jnp.pi * var))


_int_range = jax.jit(lambda x: (jnp.min(x), jnp.max(x)))


def check_discrete_data(x: Integer[Array, "batch *event"], vocab_size: int) -> Integer[Array, "batch *event"]:
    """``x`` if every entry lies in {0, …, vocab_size − 1} (VDM's discrete data, Kingma et al. 2021
    App. C), else a ValueError naming the range found: outside it the decoder's log-softmax is read out
    of bounds (NaN for x = vocab_size, a huge finite loss for x = −1). Inside a caller's jit/grad/vmap
    the check is attached to the returned ``x`` (:func:`equinox.error_if`), as
    :func:`numerics.likelihood.check_finite_samples` does."""
    if x.size == 0:
        return x
    lo, hi = _int_range(x)  # on the device; traced even for a concrete x closed over in a jit
    message = (
        f"x must hold integers in [0, vocab_size) = [0, {vocab_size}) for discrete data; got {{}}. "
        f"Quantise x to {{{{0, …, {vocab_size - 1}}}}} or pass the matching vocab_size."
    )
    if isinstance(lo, jax.core.Tracer):  # compare in x's dtype without wrapping (uint8 and 256, say)
        bad = lo < 0 if jnp.issubdtype(x.dtype, jnp.signedinteger) else jnp.zeros((), bool)
        if vocab_size <= jnp.iinfo(x.dtype).max:
            bad = bad | (hi >= jnp.asarray(vocab_size, x.dtype))
        return eqx.error_if(x, bad, message.format("values outside that range"))
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= vocab_size:
        raise ValueError(message.format(f"values in [{lo}, {hi}]"))
    return x


def discrete_reconstruction_loss(
    sde: SDE, x: Integer[Array, "batch *event"], eps: Float[Array, "batch *event"], *, vocab_size: int = 256
) -> Float[Array, " batch"]:
    """−log p(x | z_0) of VDM's factorised discrete decoder (Kingma et al. 2021 App. C; THEORY.md §4.2):

        p(x_i = k | z_0) ∝ exp(−(z_{0,i}/α_0 − enc(k))² / (2 e^{γ_0})),   k = 0, …, vocab_size − 1,

    at z_0 = α_0 enc(x) + σ_0 ε, t_0 = ``sde.t_min``; summed over dimensions. Computes in ``eps.dtype``.
    Entries of ``x`` outside {0, …, vocab_size − 1} raise a ValueError (:func:`check_discrete_data`)."""
    return _discrete_reconstruction_loss(sde, check_discrete_data(x, vocab_size), eps, vocab_size)


def _discrete_reconstruction_loss(sde: SDE, x, eps, vocab_size: int):
    dtype = eps.dtype
    t0 = jnp.asarray(sde.t_min, dtype)
    alpha, sigma = sde.mean_coeff(t0).astype(dtype), sde.std(t0).astype(dtype)
    f = encode_discrete(x, vocab_size, dtype)
    z_rescaled = (alpha * f + sigma * eps) / alpha
    var = jnp.exp(-sde.log_snr(t0)).astype(dtype)
    grid = encode_discrete(jnp.arange(vocab_size), vocab_size, dtype)
    logits = -0.5 * (z_rescaled[..., None] - grid) ** 2 / var
    log_p = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(log_p, jnp.asarray(x)[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return -_flat_sum(picked)


def continuous_diffusion_loss(
    model: Callable,
    sde: SDE,
    x: Float[Array, "batch *event"],
    t: Float[Array, " batch"],
    eps: Float[Array, "batch *event"],
) -> Float[Array, " batch"]:
    """Unbiased estimate of L_∞ over [t_min, T] for t ~ U[t_min, T]: (T − t_min)·½ γ'(t)‖ε − ε̂(z_t, t)‖²
    (VDM Eq. 17). Computed as ``dsm_loss_terms(..., "g2", parameterisation="eps")``: g²/σ² = γ'
    (THEORY.md Eq. 1.1, §4.7), so VDM's loss and Song's likelihood weighting are one formula."""
    return dsm_loss_terms(model, sde, x, t, eps, "g2", parameterisation="eps", t_min=sde.t_min)


def _discrete_grid(sde: SDE, t: Array, n_steps) -> tuple[Array, Array]:
    """(t_i, s_i) of VDM Eq. 13 for each t: i = ⌈(t − t_min)/h⌉ clipped to 1..n, t_i = t_min + i h,
    s_i = t_min + (i − 1) h, h = (T − t_min)/n. The ends are exact, t_n = T and s_1 = t_min: in floating
    point t_min + n·h can round one ulp above T (LinearGamma with t_min = 0.1 and n = 7; LiYanSDE with
    n = 7, 14, 19), outside the SDE's time range."""
    h = (sde.T - sde.t_min) / n_steps
    i = jnp.clip(jnp.ceil((t - sde.t_min) / h), 1, n_steps)
    t_i = jnp.where(i == n_steps, sde.T, sde.t_min + i * h)
    s_i = sde.t_min + (i - 1) * h
    return t_i.astype(t.dtype), s_i.astype(t.dtype)


def discrete_diffusion_loss(
    model: Callable,
    sde: SDE,
    x: Float[Array, "batch *event"],
    t: Float[Array, " batch"],
    eps: Float[Array, "batch *event"],
    n_steps: int | Integer[ArrayLike, ""],
) -> Float[Array, " batch"]:
    """Unbiased estimate of VDM's T-step loss L_T (Eq. 13; THEORY.md §4.3) for t ~ U[t_min, T]:
    t is rounded up to the grid point t_i (i uniform on 1..T), s_i = t_i − h, and the value is

        (T/2) expm1(γ(t_i) − γ(s_i)) ‖ε − ε̂(z_{t_i}; t_i)‖².

    The ε-residual ½‖ε − ε̂‖² is ``dsm_loss_terms(..., "sigma2")/(T_end − t_min)`` (one DSM
    implementation); expm1(γ_t − γ_s) = SNR(s)/SNR(t) − 1 is written with log SNR."""
    t_i, s_i = _discrete_grid(sde, t, n_steps)
    half_sq = dsm_loss_terms(model, sde, x, t_i, eps, "sigma2", parameterisation="eps", t_min=sde.t_min)
    half_sq = half_sq / (sde.T - sde.t_min)
    factor = jnp.expm1(sde.log_snr(s_i) - sde.log_snr(t_i)).astype(x.dtype)
    return (n_steps * factor * half_sq).astype(x.dtype)


def diffusion_loss(
    model: Callable,
    sde: SDE,
    x: Float[Array, "batch *event"],
    t: Float[Array, " batch"],
    eps: Float[Array, "batch *event"],
    n_steps: int = 0,
) -> Float[Array, " batch"]:
    """L_∞ (``n_steps=0``) or L_T (``n_steps=T``) per example, at given t ~ U[t_min, T] and ε."""
    if n_steps == 0:
        return continuous_diffusion_loss(model, sde, x, t, eps)
    return discrete_diffusion_loss(model, sde, x, t, eps, n_steps)


# --- the variance-minimising gradient of the schedule (VDM App. I.2) -------------------------------------


@jax.custom_vjp
def scale_gradient(tree: PyTree[Array], scale: Float[Array, ""]) -> PyTree[Array]:
    """Identity in the forward pass; the backward pass multiplies the cotangent of ``tree`` by ``scale``
    (and gives ``scale`` no gradient). ``tree`` holds inexact arrays only."""
    return tree


def _scale_fwd(tree, scale):
    return tree, scale


def _scale_bwd(scale, cotangent):
    scaled = jax.tree_util.tree_map(lambda c: (c * scale).astype(c.dtype), cotangent)
    return scaled, jnp.zeros_like(scale)


scale_gradient.defvjp(_scale_fwd, _scale_bwd)


def schedule_interior_mask(sde: LogSNRSDE) -> PyTree[bool]:
    """Boolean mask over ``sde``: True on the schedule's interior parameters — ``gamma.interior_mask()``
    when the schedule defines it (:class:`MonotoneGamma`: everything but γ₀ and log_gap), else every
    inexact array of ``sde.gamma`` — and False elsewhere."""
    mask = jax.tree_util.tree_map(lambda _: False, sde)
    gamma = sde.gamma
    if hasattr(gamma, "interior_mask"):
        inner = gamma.interior_mask()
        inner = jax.tree_util.tree_map(lambda m, leaf: bool(m) and eqx.is_inexact_array(leaf), inner, gamma)
    else:
        inner = jax.tree_util.tree_map(eqx.is_inexact_array, gamma)
    return eqx.tree_at(lambda s: s.gamma, mask, inner)


def variance_gradient_diffusion_loss(
    model: Callable,
    sde: LogSNRSDE,
    x: Float[Array, "batch *event"],
    t: Float[Array, " batch"],
    eps: Float[Array, "batch *event"],
    n_steps: int = 0,
) -> Float[Array, " batch"]:
    """The diffusion loss L_MC per example, with VDM's variance-minimising gradient for the schedule
    (Kingma et al. 2021 App. I.2; THEORY.md §4.6).

    Forward: exactly :func:`diffusion_loss` (same values). Backward: for example i, the cotangent
    reaching the schedule's *interior* parameters η (:func:`schedule_interior_mask`) is multiplied by
    2·L_MC,i via :func:`scale_gradient`, applied to a per-example copy of η. Hence, for the batch
    mean m = (1/B) Σ_i L_MC,i,

        ∂m/∂η = (1/B) Σ_i 2 L_MC,i ∂L_MC,i/∂η = ∂/∂η (1/B) Σ_i L_MC,i²        (minimise the variance:
                                                                                 E[L_MC] is η-free),
        ∂m/∂θ = ∂/∂θ (1/B) Σ_i L_MC,i        for the denoiser θ and the endpoints (γ₀, γ₁),

    the endpoints being trained on the VLB itself. The scale 2·L_MC,i is the stopped value of a first
    forward pass (under ``jit`` XLA usually shares it with the differentiated pass). A denoiser that
    itself evaluates the schedule would receive unscaled interior gradients through that path: give
    the model t (or a stopped γ_t).
    """
    values = jax.lax.stop_gradient(diffusion_loss(model, sde, x, t, eps, n_steps))
    interior, rest = eqx.partition(sde, schedule_interior_mask(sde))
    batch = x.shape[0]
    per_example = jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), interior)

    def one(interior_i, scale_i, xi, ti, ei):
        sde_i = eqx.combine(scale_gradient(interior_i, scale_i), rest)
        return diffusion_loss(model, sde_i, xi[None], ti[None], ei[None], n_steps)[0]

    return jax.vmap(one)(per_example, 2 * values, x, t, eps)


# --- the whole VLB -------------------------------------------------------------------------------------


class VDMLoss(eqx.Module):
    """Per-example terms of −VLB in nats (all (batch,)): ``total = prior + reconstruction + diffusion``.
    For 8-bit data, bits/dim = total / (D ln 2)."""

    total: Float[Array, " batch"]
    prior: Float[Array, " batch"]
    reconstruction: Float[Array, " batch"]
    diffusion: Float[Array, " batch"]


DATA_KINDS: tuple[str, ...] = ("continuous", "discrete")


def vdm_loss(
    model: Callable,
    sde: LogSNRSDE,
    x: Shaped[Array, "batch *event"],
    key: PRNGKeyArray,
    *,
    data: str = "continuous",
    n_steps: int = 0,
    antithetic: bool = True,
    variance_gradient: bool = False,
    vocab_size: int = 256,
    dtype=None,
) -> VDMLoss:
    """VDM's −VLB per example (Kingma et al. 2021 Eq. 11; THEORY.md §4.2).

    t ~ U[t_min, T] (antithetic over the batch), as VDM's code: unbiased under any schedule and of low
    variance under VDM's own (γ' bounded). Under a schedule whose γ'(t) = g²/σ² blows up at t_min —
    the VP SDE with t_min = 1e-5, where γ' ~ 1/t — the variance of the diffusion term grows like
    1/t_min (STACK_NOTES pitfall 7); estimate L_∞ there with t ~ p(t) ∝ γ'(t) instead
    (:func:`numerics.losses.dsm_loss_terms` with ``"g2_is"``, as ``python -m training eval`` does).

    Args:
        model: ε̂(z, t) for ONE example.
        sde: a :class:`LogSNRSDE` (any schedule: Linear, Cosine, :class:`MonotoneGamma`).
        x: continuous data (float) or, for ``data="discrete"``, integers in {0, …, vocab_size − 1}
            (encoded by :func:`encode_discrete`, decoded by VDM's discrete decoder); other values
            raise a ValueError (inside a caller's jit, an equinox runtime error).
        key: one key; t (antithetic unless ``antithetic=False``), ε and ε_0 are drawn from it.
        n_steps: 0 for L_∞, T > 0 for L_T.
        variance_gradient: use :func:`variance_gradient_diffusion_loss` for the diffusion term (same
            values; the schedule's interior gets ∇E[L²]).
        dtype: the compute dtype for discrete data (default float64 if enabled, else float32).
    """
    check_choice("data", data, DATA_KINDS)
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 0:
        raise ValueError(f"n_steps must be a non-negative integer (0 = continuous time); got {n_steps!r}.")
    if data == "discrete":
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise ValueError(f"x must hold integers in [0, {vocab_size}) for data='discrete'; got dtype {x.dtype}.")
        x = check_discrete_data(x, vocab_size)
        dtype = jnp.result_type(float) if dtype is None else dtype
        f = encode_discrete(x, vocab_size, dtype)
    else:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"x must be floating point for data='continuous'; got dtype {x.dtype}.")
        f = x
    dtype = f.dtype
    k_t, k_eps, k_eps0 = jax.random.split(key, 3)
    batch = x.shape[0]
    if antithetic:
        t = antithetic_times(k_t, batch, t_min=sde.t_min, T=sde.T, dtype=dtype)
    else:
        t = jax.random.uniform(k_t, (batch,), dtype, minval=sde.t_min, maxval=sde.T)
    eps = jax.random.normal(k_eps, f.shape, dtype)
    eps0 = jax.random.normal(k_eps0, f.shape, dtype)
    diff_fn = variance_gradient_diffusion_loss if variance_gradient else diffusion_loss
    diff = diff_fn(model, sde, f, t, eps, int(n_steps))
    prior = prior_loss(sde, f)
    if data == "discrete":
        recon = _discrete_reconstruction_loss(sde, x, eps0, vocab_size)  # x checked above
    else:
        recon = gaussian_reconstruction_loss(sde, f, eps0)
    return VDMLoss(total=prior + recon + diff, prior=prior, reconstruction=recon, diffusion=diff)
