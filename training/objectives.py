"""Training objectives: each one is a thin adapter from a config to the ONE implementation in numerics.

| ``loss.objective`` | per-example value (nats)                                      | implementation                          |
|--------------------|----------------------------------------------------------------|-----------------------------------------|
| ``dsm``            | λ-weighted DSM, unbiased for J_DSM (Song et al. 2021, Eq. 7)    | :func:`numerics.losses.dsm_loss_terms`  |
| ``high_order``     | L1 + w2·(L2_F + L2_tr) + w3·L3 (Lu et al. 2022, Eqs. 13–15)      | :func:`numerics.high_order.high_order_dsm_loss` |
| ``vdm``            | −VLB = prior + reconstruction + L_∞ (Kingma et al. 2021, Eq. 11, 17) | :func:`numerics.vdm.vdm_loss`      |

:func:`make_objective` returns ``loss(params, x0, key) → (mean, (per-example values, metrics))``;
the training step (training.train) adds only gradients, the optimiser and logging.

**Learned schedules (VDM).** With ``sde.name = "vdm"`` and ``schedule = "learned"`` the model is a
:class:`ScheduledNet` — the noise predictor together with its :class:`numerics.LogSNRSDE`, whose
:class:`numerics.vdm.MonotoneGamma` parameters are trained with the network (endpoints on the VLB,
the interior on the variance of the diffusion-loss estimator when ``loss.variance_gradient``;
VDM App. I.2). :func:`sde_of` returns the SDE a model was trained with, learned or fixed.

**Dropout** keys are per example, ``fold_in(step key, bits of t)`` (the numerics losses vmap the
model over (x_t, t) only).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, Shaped

import numerics
from numerics.high_order import high_order_dsm_loss
from numerics.vdm import MonotoneGamma, vdm_loss

__all__ = ["ScheduledNet", "build_schedule_sde", "sde_of", "make_objective", "uses_discrete_data"]

F32 = jnp.float32


class ScheduledNet(eqx.Module):
    """A noise predictor ε̂(x, t) and the (learned) VDM forward process it is trained under."""

    net: eqx.Module
    sde: numerics.LogSNRSDE

    def __call__(self, x, t, *, key: PRNGKeyArray | None = None):
        return self.net(x, t, key=key)


def build_schedule_sde(c, key: PRNGKeyArray | None = None) -> numerics.LogSNRSDE:
    """The :class:`numerics.LogSNRSDE` of a ``vdm`` :class:`training.configs.SDEConfig`: a learned
    :class:`MonotoneGamma` (float32 parameters from ``key``) or a fixed linear/cosine γ."""
    t_min = 0.0 if c.t_min is None else float(c.t_min)
    if c.schedule == "learned":
        if key is None:
            raise ValueError("a learned VDM schedule needs a key for its initial parameters.")
        gamma = MonotoneGamma(c.gamma_min, c.gamma_max, n_features=c.schedule_features, endpoints=c.endpoints,
                              key=key, dtype=F32)
    elif c.schedule == "linear":
        gamma = numerics.LinearGamma(float(c.gamma_min), float(c.gamma_max))
    elif c.schedule == "cosine":
        gamma = numerics.CosineGamma(float(c.gamma_min), float(c.gamma_max))
    else:
        raise ValueError(f"sde.schedule must be 'learned', 'linear' or 'cosine'; got {c.schedule!r}.")
    return numerics.LogSNRSDE(gamma, t_min=t_min, T=float(c.T))


def sde_of(model, cfg) -> numerics.SDE:
    """The forward SDE of a (combined) model: its own learned one for a :class:`ScheduledNet`,
    else the one the config describes (training.train.build_sde)."""
    if isinstance(model, ScheduledNet):
        return model.sde
    from training.train import build_sde

    return build_sde(cfg.sde)


def uses_discrete_data(cfg) -> bool:
    """Whether the objective consumes the raw 8-bit images (VDM's discrete decoder) instead of
    uniformly dequantised data."""
    if cfg.loss.objective != "vdm":
        return False
    if cfg.loss.vdm_data == "auto":
        return cfg.data.name in ("digits", "cifar10")
    if cfg.loss.vdm_data == "discrete" and cfg.data.name == "mixture":
        raise ValueError("loss.vdm_data=discrete needs 8-bit image data; mixtures are continuous (use continuous or auto).")
    return cfg.loss.vdm_data == "discrete"


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)


def _eps_model(net: Callable, k_drop: PRNGKeyArray | None, compute) -> Callable:
    def eps_model(x_t, t_i):
        drop_key = None
        if k_drop is not None:
            drop_key = jax.random.fold_in(k_drop, jax.lax.bitcast_convert_type(t_i.astype(F32), jnp.uint32))
        return net(x_t.astype(compute), t_i.astype(F32), key=drop_key).astype(x_t.dtype)

    return eps_model


def _noise_thirds(sde, t, raw_sq) -> dict:
    """Mean of the unweighted ½‖ε − ε̂‖²/D over the examples whose t falls in the lowest, middle and
    highest third of the importance CDF (i.e. of log-SNR)."""
    u = sde.importance_cdf(t, sde.t_min)
    out = {}
    for name, lo, hi in (("low_noise", 0.0, 1 / 3), ("mid_noise", 1 / 3, 2 / 3), ("high_noise", 2 / 3, 1.01)):
        m = ((u >= lo) & (u < hi)).astype(F32)
        out[f"eps_mse_{name}"] = jnp.sum(m * raw_sq) / jnp.maximum(jnp.sum(m), 1.0)
    return out


def make_objective(static, cfg, *, train: bool = True):
    """loss(params, x0, key) → (batch mean, (per-example values, metrics dict of scalars)).

    ``params`` and ``static`` combine to the network (or :class:`ScheduledNet`); ``x0`` is the data
    batch — float32 (dequantised images, mixture samples) or, when :func:`uses_discrete_data`, the
    raw uint8 images. ``train`` turns dropout on. Float32 (or bfloat16 compute) throughout.
    """
    lc = cfg.loss
    compute = jnp.bfloat16 if cfg.model.compute_dtype == "bfloat16" else F32
    objective = lc.objective
    if objective not in ("dsm", "high_order", "vdm"):
        raise ValueError(f"loss.objective must be 'dsm', 'high_order' or 'vdm'; got {objective!r}.")
    if objective == "vdm" and cfg.sde.name != "vdm":
        raise ValueError("loss.objective=vdm needs sde.name=vdm (a γ = −log SNR schedule); set sde.name=vdm.")
    if objective == "high_order" and lc.order not in (2, 3):
        raise ValueError(f"loss.order must be 2 or 3 for the high-order objective; got {lc.order}.")
    discrete = uses_discrete_data(cfg)
    fixed_sde = None if cfg.sde.name == "vdm" else sde_of(None, cfg)

    def loss_fn(params, x0: Shaped[Array, "batch *event"], key: PRNGKeyArray):
        k_obj, k_drop = jax.random.split(key)
        model = eqx.combine(_cast_floats(params, compute) if compute != F32 else params, static)
        sde = model.sde if isinstance(model, ScheduledNet) else fixed_sde
        eps_model = _eps_model(model, k_drop if train else None, compute)
        batch = x0.shape[0]
        d = math.prod(x0.shape[1:])
        metrics: dict[str, Array] = {}
        if objective == "dsm":
            k_t, k_eps = jax.random.split(k_obj)
            t = numerics.sample_time(sde, k_t, (batch,), lc.weighting, t_min=sde.t_min, dtype=F32)
            eps = jax.random.normal(k_eps, x0.shape, dtype=F32)
            terms = numerics.dsm_loss_terms(eps_model, sde, x0.astype(F32), t, eps, lc.weighting,
                                            parameterisation="eps", t_min=sde.t_min)
            raw_sq = terms / numerics.time_weight(sde, t, lc.weighting, t_min=sde.t_min) / d
            metrics.update(_noise_thirds(sde, t, raw_sq))
        elif objective == "high_order":
            out = high_order_dsm_loss(eps_model, sde, x0.astype(F32), k_obj, order=int(lc.order),
                                      weighting=lc.weighting, weights=tuple(lc.order_weights),
                                      estimator=lc.estimator, n_probes=int(lc.n_probes),
                                      parameterisation="eps", t_min=sde.t_min)
            terms = out.total
            metrics.update(first=jnp.mean(out.first), second_frobenius=jnp.mean(out.second_frobenius),
                           second_trace=jnp.mean(out.second_trace), third=jnp.mean(out.third))
        else:
            out = vdm_loss(eps_model, sde, x0 if discrete else x0.astype(F32), k_obj,
                           data="discrete" if discrete else "continuous", antithetic=bool(lc.antithetic),
                           variance_gradient=bool(lc.variance_gradient), dtype=F32)
            terms = out.total
            metrics.update(prior=jnp.mean(out.prior), reconstruction=jnp.mean(out.reconstruction),
                           diffusion=jnp.mean(out.diffusion),
                           diffusion_var=jnp.var(out.diffusion),
                           gamma_0=jnp.asarray(sde.gamma(jnp.asarray(0.0, F32)), F32),
                           gamma_1=jnp.asarray(sde.gamma(jnp.asarray(1.0, F32)), F32))
            if discrete:
                metrics["bpd"] = jnp.mean(terms) / (d * math.log(2.0))
        metrics = {k: jax.lax.stop_gradient(v).astype(F32) for k, v in metrics.items()}
        return jnp.mean(terms), (terms, metrics)

    return loss_fn
