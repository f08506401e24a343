"""Evaluation of trained score models: ODE NLL, Song et al.'s ε-offset bound, bits/dim.

Every function returns **per-example values with per-example standard errors** (an
:class:`Estimate`); ``Estimate.mean`` / ``Estimate.se`` give the data average and its standard
error over examples (which already contains the Monte Carlo noise of each example's estimate).

* :func:`ode_nll` — −log p^ODE_ε(x) by :func:`numerics.likelihood.ode_log_likelihood` (Song et al.
  2021, §4.3; THEORY.md §2.1, §2.8). Exact divergence for D ≤ ``exact_max_dim`` (16), else
  Hutchinson with ``n_probes`` Rademacher probes (their spread is the per-example SE).
  **Precision:** the ODE state and the log-det accumulator are float64 (``dtype``), the network is
  evaluated in float32 (its stored dtype) inside the float64 solve by :class:`EpsModel` (input cast
  to float32, output cast back). At rtol = atol = 1e-5 (the default, Lu et al.'s toy setting) the
  float32 rounding of the network (~1e-7 relative) is far below the solver tolerance, and the
  accumulated divergence keeps float64 resolution.
* :func:`eps_offset_bound` — Song et al. 2021's bound with the ε-truncation offset (Theorem 2 on
  [ε, T] + the Gaussian/Tweedie decoder on [0, ε]; THEORY.md §2.4, §2.7), per example:

      prior:      −E[log π(X_T) | x]                          (exact for the Gaussian SDE prior)
    + diffusion:  ½∫_ε^T g² E‖s_θ(x_t,t) + ε/σ_t‖² dt          (numerics.losses.dsm_loss_terms, t ~ p_IS)
    − constant:   (D/2) log(σ_T²/σ_ε²)                         (THEORY.md Eq. 2.1)
    + decoder:    E[−log N(x; m̂(x_ε), σ_ε²/α_ε² I)],  m̂ = (x_ε + σ_ε² s_θ(x_ε, ε))/α_ε (Tweedie)
    − entropy:    (D/2) log(2πe σ_ε²)                          (entropy of q_{0ε}(·|x))

  The diffusion term subtracts the mean-zero control variate c(t)·w(t)·½(‖ε‖² − D) (numerics.checks.
  song2021 uses it with c = 1 per quadrature node): ε is independent of t, so any c(t) leaves the
  mean unchanged. c(t) = (SNR/(1 + SNR))² is the best coefficient for unit-variance Gaussian data:
  it removes the χ²_D noise of the small-t draws (where ε̂ ≈ 0) without adding it back at large t
  (where ε̂ ≈ ε). On the 2-D mixture with the exact score the per-draw standard deviation drops from
  20 to 12 nats. The t of the ``n_draws`` draws of one example are stratified in the importance CDF
  (u_j = (j + U_j)/n_draws), which is unbiased; the per-example SE reported is the i.i.d. formula,
  an upper bound for stratified draws.
  :func:`eps_offset_bound_terms` is the per-example computation at given (t, ε) draws: the Monte
  Carlo diffusion term here, everything else by :func:`numerics.bounds.eps_offset_bound` (shared with
  ``numerics.checks.song2021.check_eps_offset_bound``, which estimates the diffusion term by
  quadrature instead).
* :func:`to_bits_per_dim`, :func:`image_nll_bpd`, :func:`image_bound_bpd` — uniform
  dequantisation (training.data.dequantize) and numerics.likelihood.bits_per_dim
  (data_scale = 2 for data centred to [−1, 1]; THEORY.md §2.9).
* :func:`load_model` — the EMA parameters of a training work directory's checkpoint (opened
  read-only, so it can run beside a live trainer; training.checkpoint).

Bad input: a sample with NaN or inf raises the same ValueError in :func:`ode_nll` and the bound
functions (:func:`check_finite_samples`); the image functions take only raw uint8 pixels
(training.data.check_images).
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

import numerics
from numerics.likelihood import bits_per_dim, check_finite_samples, ode_log_likelihood
from numerics.bounds import EpsOffsetBound
from numerics.bounds import eps_offset_bound as assemble_bound
from numerics.losses import dsm_loss_terms, time_weight
from numerics.sde import SDE
from training.fileio import read_json

__all__ = [
    "Estimate",
    "EpsModel",
    "eps_from_score",
    "check_finite_samples",
    "ode_nll",
    "eps_offset_bound_terms",
    "eps_offset_bound",
    "to_bits_per_dim",
    "image_nll_bpd",
    "image_bound_bpd",
    "config_from_dict",
    "load_model",
    "locate_checkpoint",
    "WorkdirError",
    "checkpoint_steps",
]

F32 = jnp.float32
F64 = jnp.float64


# --- results ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Per-example values (N,) and their Monte Carlo standard errors (N,; 0 = deterministic up to
    solver tolerance). ``unit``: "nats" or "bits/dim"."""

    values: np.ndarray
    stderr: np.ndarray
    unit: str = "nats"

    @classmethod
    def from_draws(cls, draws: np.ndarray, unit: str = "nats") -> "Estimate":
        """Per-example mean of Monte Carlo draws (N, n_draws) and its standard error, the draws'
        standard deviation (ddof 1) over √n_draws."""
        draws = np.asarray(draws, np.float64)
        return cls(draws.mean(1), draws.std(1, ddof=1) / math.sqrt(draws.shape[1]), unit)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def se(self) -> float:
        """Standard error of :attr:`mean` over examples (includes each example's MC noise)."""
        n = self.values.shape[0]
        return float(np.std(self.values, ddof=1) / math.sqrt(n)) if n > 1 else float(self.stderr[0])

    def minus(self, reference: ArrayLike) -> "Estimate":
        """The paired difference ``values − reference`` on the same examples (e.g. the excess over the
        true −log q(x) at the test points): its :attr:`se` is the paired standard error, in which the
        spread of ``reference`` over the examples cancels."""
        reference = np.asarray(reference, np.float64).reshape(self.values.shape)
        return Estimate(self.values - reference, self.stderr, self.unit)

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.se:.4f} {self.unit}"


# --- the model as a score / noise predictor ---------------------------------------------------------


class EpsModel(eqx.Module):
    """A trained noise predictor ε̂_θ(x, t) as a score model s_θ = −ε̂_θ/σ_t for numerics.

    ``net`` is the equinox network (float32 parameters); inputs are cast to ``compute_dtype`` and the
    outputs back to the caller's dtype, so a float64 ODE solve evaluates the float32 network. A
    PyTree: models of the same structure do not recompile jitted numerics.
    """

    net: Callable
    sde: SDE
    compute_dtype: Any = eqx.field(static=True, default=F32)

    def eps(self, x: Float[Array, "*event"], t) -> Float[Array, "*event"]:
        t = jnp.asarray(t)
        out = self.net(x.astype(self.compute_dtype), t.astype(self.compute_dtype))
        return out.astype(x.dtype)

    def __call__(self, x: Float[Array, "*event"], t) -> Float[Array, "*event"]:
        t = jnp.asarray(t)
        return -self.eps(x, t) / self.sde.std(t).astype(x.dtype)


class _ScoreAsEps(eqx.Module):
    score_fn: Callable
    sde: SDE

    def __call__(self, x, t):
        t = jnp.asarray(t)
        return -self.sde.std(t).astype(x.dtype) * self.score_fn(x, t)


class _EpsOf(eqx.Module):
    model: EpsModel

    def __call__(self, x, t):
        return self.model.eps(x, t)


def eps_from_score(score_fn: Callable, sde: SDE) -> EpsModel:
    """Wrap an exact score (x, t) ↦ ∇log q_t(x) (e.g. ``GaussianMixture.score_fn``) as an
    :class:`EpsModel` with ε̂ = −σ_t s, in float64 — for tests against closed forms."""
    return EpsModel(_ScoreAsEps(score_fn, sde), sde, compute_dtype=F64)


# --- ODE likelihood ---------------------------------------------------------------------------------


def ode_nll(
    model: Callable,
    sde: SDE,
    x: Float[Array, "N *event"],
    *,
    key: PRNGKeyArray | None = None,
    divergence: Literal["auto", "exact", "hutchinson"] = "auto",
    exact_max_dim: int = 16,
    n_probes: int = 4,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    dtype=F64,
    batch_size: int | None = None,
    prior_log_prob: Callable | None = None,
) -> Estimate:
    """−log p^ODE_{t_min}(x) in nats per example (numerics.likelihood.ode_log_likelihood).

    ``model``: an :class:`EpsModel` (or any score function (x, t) ↦ s). ``divergence="auto"``: the
    exact trace for D ≤ ``exact_max_dim``, else Hutchinson with ``n_probes`` probes (``key``
    required; the per-example SE is the probes' spread). ``batch_size`` splits the batch into
    solves of that size (each an adaptive shared-step solve). ``prior_log_prob``: log π at T
    (default the SDE prior). Solve in ``dtype`` (float64 by default; see the module docstring).
    """
    x = jnp.asarray(x, dtype)
    n = x.shape[0]
    dim = int(np.prod(x.shape[1:]))
    if divergence == "auto":
        divergence = "exact" if dim <= exact_max_dim else "hutchinson"
    if divergence == "hutchinson" and key is None:
        raise ValueError("ode_nll: key is required for the Hutchinson divergence (D > exact_max_dim).")
    bs = n if batch_size is None else int(batch_size)
    vals, ses = [], []
    for i, start in enumerate(range(0, n, bs)):
        xb = x[start : start + bs]
        kw = {}
        if divergence == "hutchinson":
            kw = dict(divergence="hutchinson", n_probes=n_probes, key=jax.random.fold_in(key, i))
        res = ode_log_likelihood(model, sde, xb, rtol=rtol, atol=atol, prior_log_prob=prior_log_prob, **kw)
        vals.append(-np.asarray(res.log_prob, np.float64))
        se = np.asarray(res.stderr, np.float64)
        ses.append(np.where(np.isfinite(se), se, 0.0))
    return Estimate(np.concatenate(vals), np.concatenate(ses), "nats")


# --- Song et al.'s ε-offset bound -------------------------------------------------------------------


def eps_offset_bound_terms(
    model: EpsModel,
    sde: SDE,
    x0: Float[Array, "N *event"],
    t: Float[Array, " N"],
    eps_t: Float[Array, "N *event"],
    eps_0: Float[Array, "N *event"],
    *,
    weighting: Literal["g2", "g2_is"] = "g2_is",
    control_variate: bool = True,
    check_finite: bool = True,
) -> EpsOffsetBound:
    """One unbiased per-example draw of Song et al.'s ε-offset bound (THEORY.md §2.7), ε = sde.t_min.

    The diffusion term is Monte Carlo over (t, ``eps_t``) through
    :func:`numerics.losses.dsm_loss_terms` (t drawn by the caller from the weighting's law), minus the
    control variate c(t)·w(t)·½(‖ε‖² − D) when ``control_variate``; prior, Eq. 2.1 constant, Tweedie
    decoder (x_ε from ``eps_0``) and entropy are assembled by :func:`numerics.bounds.eps_offset_bound`.
    Computes in the dtype of ``x0``. A sample of ``x0`` with NaN or inf raises a ValueError
    (:func:`check_finite_samples`, as :func:`ode_nll`); ``check_finite=False`` skips that check for
    callers that checked already or watch their own results (the dequantiser's training loop).
    """
    if weighting not in ("g2", "g2_is"):
        raise ValueError(f"the bound needs the likelihood weighting ('g2' or 'g2_is'); got {weighting!r}.")
    if check_finite:
        x0 = check_finite_samples(x0, "x0")
    n = x0.shape[0]
    D = int(np.prod(x0.shape[1:]))
    dtype = x0.dtype
    t_e = float(sde.t_min)
    diff = dsm_loss_terms(_EpsOf(model), sde, x0, t, eps_t, weighting, parameterisation="eps", t_min=t_e)
    if control_variate:
        tt = t.astype(dtype)
        snr = jnp.exp(sde.log_snr(tt))
        coeff = jnp.square(snr / (1.0 + snr))
        sq = jnp.sum(jnp.square(eps_t.reshape(n, -1)), -1)
        diff = diff - coeff * time_weight(sde, tt, weighting, t_min=t_e) * 0.5 * (sq - D)
    return assemble_bound(model, sde, x0, diff.astype(dtype), eps_0)


@eqx.filter_jit
def _bound_draw(model, sde, x0, key, stratum, n_strata, weighting, control_variate):
    k_t, k_e, k_0 = jax.random.split(key, 3)
    u = (stratum + jax.random.uniform(k_t, (x0.shape[0],), dtype=x0.dtype)) / n_strata
    t_e = float(sde.t_min)
    if weighting == "g2_is":  # the inverse CDF of numerics.sample_time, on stratified u
        t = sde.importance_inverse_cdf(u, t_e).astype(x0.dtype)
    else:
        t = t_e + u * (sde.T - t_e)
    eps_t = jax.random.normal(k_e, x0.shape, x0.dtype)
    eps_0 = jax.random.normal(k_0, x0.shape, x0.dtype)
    return eps_offset_bound_terms(model, sde, x0, t, eps_t, eps_0, weighting=weighting,
                                  control_variate=control_variate, check_finite=False).total  # checked by the caller


def eps_offset_bound(
    model: EpsModel,
    sde: SDE,
    x: Float[Array, "N *event"],
    key: PRNGKeyArray,
    *,
    n_draws: int = 16,
    weighting: Literal["g2", "g2_is"] = "g2_is",
    control_variate: bool = True,
    dtype=F64,
    batch_size: int | None = None,
) -> Estimate:
    """Song et al. 2021's upper bound on −log p_0(x) with the ε-offset (Theorem 2 + THEORY.md §2.7),
    in nats per example: the mean of ``n_draws`` draws of :func:`eps_offset_bound_terms` (t ~ p_IS by
    default, stratified over the draws; fresh ε per draw), with the draws' (conservative) standard error. ``model`` must expose ``eps`` (an
    :class:`EpsModel`; wrap an exact score with :func:`eps_from_score`). A sample of ``x`` with NaN or
    inf raises a ValueError, as in :func:`ode_nll`."""
    if n_draws < 2:
        raise ValueError(f"n_draws must be at least 2 (for a per-example standard error); got {n_draws}.")
    x = check_finite_samples(jnp.asarray(x, dtype))
    n = x.shape[0]
    bs = n if batch_size is None else int(batch_size)
    draws = []
    for j in range(int(n_draws)):
        kj = jax.random.fold_in(key, j)
        parts = [
            _bound_draw(model, sde, x[s : s + bs], jax.random.fold_in(kj, s), jnp.asarray(j, dtype),
                        jnp.asarray(n_draws, dtype), weighting, control_variate)
            for s in range(0, n, bs)
        ]
        draws.append(np.concatenate([np.asarray(p, np.float64) for p in parts]))
    return Estimate.from_draws(np.stack(draws, axis=1), "nats")


# --- bits/dim ---------------------------------------------------------------------------------------


def to_bits_per_dim(est: Estimate, dims: int, *, data_scale: float = 2.0, n_bins: int = 256) -> Estimate:
    """An NLL (or bound) in nats of dequantised, scaled data → bits/dim of the discrete data via
    :func:`numerics.likelihood.bits_per_dim` (THEORY.md §2.9); standard errors scale by 1/(D ln 2)."""
    vals = np.asarray(bits_per_dim(-est.values, dims, data_scale=data_scale, n_bins=n_bins))
    return Estimate(vals, est.stderr / (dims * math.log(2.0)), "bits/dim")


def _dequantised(k_uint8, key, centered: bool):
    from training.data import check_images, dequantize

    return dequantize(jnp.asarray(check_images(k_uint8)), key, centered=centered)


def image_nll_bpd(model: Callable, sde: SDE, images_uint8, key: PRNGKeyArray, *, centered: bool = True,
                  **ode_kw) -> Estimate:
    """Bits/dim of 8-bit images (N, C, H, W) by the ODE NLL of uniformly dequantised data (one u per
    image: an unbiased estimate of the Jensen bound on −log₂ P(k)/D). ``images_uint8`` must be the raw
    uint8 pixels (training.data.check_images), not dequantised floats."""
    k_u, k_p = jax.random.split(key)
    x = _dequantised(images_uint8, k_u, centered)
    est = ode_nll(model, sde, x, key=k_p, **ode_kw)
    return to_bits_per_dim(est, int(np.prod(x.shape[1:])), data_scale=2.0 if centered else 1.0)


def image_bound_bpd(model: EpsModel, sde: SDE, images_uint8, key: PRNGKeyArray, *, centered: bool = True,
                    **bound_kw) -> Estimate:
    """Bits/dim of 8-bit images (raw uint8 pixels, as :func:`image_nll_bpd`) by the ε-offset bound of
    uniformly dequantised data."""
    k_u, k_b = jax.random.split(key)
    x = _dequantised(images_uint8, k_u, centered)
    est = eps_offset_bound(model, sde, x, k_b, **bound_kw)
    return to_bits_per_dim(est, int(np.prod(x.shape[1:])), data_scale=2.0 if centered else 1.0)


# --- loading a trained model --------------------------------------------------------------------------


def _build(tp, value):
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(**{k: _build(hints[k], v) for k, v in value.items() if k in hints})
    if typing.get_origin(tp) is tuple and isinstance(value, list):
        return tuple(value)
    return value


def config_from_dict(d: typing.Any, *, source: str = "config.json"):
    """A :class:`training.configs.Config` from its dict/JSON form (``config.json`` of a work directory),
    checked by :func:`training.configs.validate` like a config given on the command line: a hand-edited
    or damaged file raises a ``ValueError`` naming ``source``, the key and what it must be, instead of
    loading a model under settings it was not trained with."""
    from training.configs import Config, validate

    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a JSON object of config sections, got {type(d).__name__}; "
                         "restore it from the training run.")
    try:
        return validate(_build(Config, d))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e} (edit that key in {source}, or restore the file from the training run)") from e


def checkpoint_steps(workdir: str | os.PathLike) -> list[int]:
    """The steps of the checkpoints kept in ``workdir/checkpoints``."""
    from training.checkpoint import Checkpointer

    ck = Checkpointer(os.path.join(os.fspath(workdir), "checkpoints"))  # read-only: a live trainer may be writing
    try:
        return sorted(ck.all_steps())
    finally:
        ck.close()


class WorkdirError(FileNotFoundError):
    """A training work directory (or one of its checkpoints) that is missing; the message names the
    argument (``--workdir``, ``--step``) and the fix."""


def locate_checkpoint(workdir: str | os.PathLike, step: int | None = None) -> tuple[dict, int]:
    """(config dict, checkpoint step) of a training work directory: ``step``, or the latest if None.
    Raises :class:`WorkdirError` when the directory or the checkpoint is missing, or ``config.json`` is
    missing or cannot be read as JSON (training.fileio.read_json: empty, cut off, not UTF-8, no access)
    (shared by load_model and the eval/sample/dequant command lines)."""
    workdir = os.fspath(workdir)
    if not os.path.isdir(workdir):
        raise WorkdirError(
            f"--workdir {workdir}: no such directory. Pass the work directory of a training run "
            "(python -m training train --config NAME --workdir DIR)."
        )
    cfg_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(cfg_path):
        raise WorkdirError(
            f"--workdir {workdir} has no config.json, so it is not a training work directory; pass the --workdir "
            "of a training run (python -m training train writes config.json there)."
        )
    cfg_dict = read_json(cfg_path, error=WorkdirError,
                         fix="restore it from the training run, or pass the --workdir of another training run.")
    ck_dir = os.path.join(workdir, "checkpoints")
    steps = checkpoint_steps(workdir) if os.path.isdir(ck_dir) else []
    if not steps:
        raise WorkdirError(
            f"--workdir {workdir}: no checkpoint in {ck_dir}; train first "
            f"(python -m training train --config NAME --workdir {workdir}, or --resume to continue a run)."
        )
    if step is None:
        return cfg_dict, int(steps[-1])
    if step not in steps:
        raise WorkdirError(f"--step {step}: no such checkpoint in {ck_dir}; available steps: {steps} "
                           "(or leave --step out for the latest).")
    return cfg_dict, int(step)


def load_model(workdir: str | os.PathLike, step: int | None = None, *, ema: bool = True):
    """(model, cfg, sde, step): the :class:`EpsModel` with the EMA (or raw) parameters of checkpoint
    ``step`` (latest if None) of a training work directory, its config and SDE (for a VDM run the
    :class:`numerics.LogSNRSDE` of its learned schedule, with the EMA parameters). Raises
    :class:`WorkdirError` for a missing directory, config or checkpoint."""
    from training.objectives import sde_of
    from training.train import load_state

    cfg_dict, step = locate_checkpoint(workdir, step)
    cfg = config_from_dict(cfg_dict, source=os.path.join(os.fspath(workdir), "config.json"))
    state, static = load_state(cfg, workdir, step)
    net = eqx.combine(state.ema if ema else state.params, static)
    sde = sde_of(net, cfg)  # a VDM run's learned schedule lives in the model
    return EpsModel(net, sde), cfg, sde, int(step)
