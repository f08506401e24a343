"""Training state, the jit-compiled sharded step, and the training loop.

Objective: the weighted denoising score-matching loss of Song, Durkan, Murray & Ermon 2021 (Eq. 7;
THEORY.md §2.2, §2.6) from :mod:`numerics.losses` — ``numerics.sample_time`` draws t (uniform, or
p(t) ∝ g²/σ² by the exact inverse CDF), ``numerics.dsm_loss_terms`` evaluates the per-example
terms; this module adds only the network, data, optimiser and I/O. Networks predict the noise ε̂;
the score is s_θ = −ε̂/σ_t (``parameterisation="eps"``).

Dtypes: importing :mod:`numerics` turns on ``jax_enable_x64``; everything here is explicitly
float32 (parameters, data, t, ε, optimiser state, EMA), with optional bfloat16 compute.

Determinism: the step key is ``fold_in(base_key, step)`` and the data order is a pure function
of (seed, step), so a run resumed from a checkpoint reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

import numerics
from training import sharding as shd
from training.checkpoint import Checkpointer
from training.configs import Config, config_to_dict, validate
from training.data import event_shape_of, make_stream
from training.metrics import MetricsWriter, all_finite
from training.networks import DDPMpp, FlatMLPScoreNet, MLPScoreNet
from training.objectives import ScheduledNet, make_objective, uses_discrete_data

__all__ = [
    "TrainState",
    "NonFiniteLossError",
    "build_sde",
    "build_model",
    "build_optimizer",
    "init_state",
    "make_loss_fn",
    "make_train_step",
    "train",
    "load_state",
]

F32 = jnp.float32


class NonFiniteLossError(RuntimeError):
    """Raised when a step produces a NaN/inf loss or gradient norm, or NaN/inf parameters, EMA or
    optimiser state after its update; nothing non-finite is saved, so the last checkpoint is good."""


class TrainState(eqx.Module):
    """Everything a checkpoint holds: step, float32 parameters, their EMA and the optimiser state."""

    step: Int[Array, ""]
    params: PyTree
    ema: PyTree
    opt_state: PyTree


# --- builders -------------------------------------------------------------------------------


def build_sde(c, key: PRNGKeyArray | None = None) -> numerics.SDE:
    """The numerics SDE of an :class:`SDEConfig`. A learned VDM schedule needs ``key`` for its
    initial parameters; the trained one lives in the model (training.objectives.sde_of)."""
    if c.name == "vdm":
        from training.objectives import build_schedule_sde

        return build_schedule_sde(c, key)
    kw = {} if c.t_min is None else {"t_min": c.t_min}
    if c.name == "vp":
        return numerics.VPSDE(c.beta_min, c.beta_max, T=c.T, **kw)
    if c.name == "subvp":
        return numerics.SubVPSDE(c.beta_min, c.beta_max, T=c.T, **kw)
    if c.name == "ve":
        return numerics.VESDE(c.sigma_min, c.sigma_max, kernel=c.ve_kernel, T=c.T, **kw)
    raise ValueError(f"unknown SDE {c.name!r}; choose vp, subvp, ve or vdm.")


def build_model(c, event_shape: tuple[int, ...], key: PRNGKeyArray) -> eqx.Module:
    """The noise-prediction network of a :class:`ModelConfig` for examples of ``event_shape``."""
    if c.name == "mlp":
        if len(event_shape) != 1:  # images: the MLP on flattened pixels
            return FlatMLPScoreNet(tuple(event_shape), c.width, c.depth, c.temb_dim,
                                   input_fourier=tuple(c.input_fourier), key=key)
        return MLPScoreNet(event_shape[0], c.width, c.depth, c.temb_dim, input_fourier=tuple(c.input_fourier), key=key)
    if c.name == "ddpmpp":
        if len(event_shape) != 3:
            raise ValueError(f"DDPM++ needs images of shape (C, H, W); got examples of shape {event_shape}.")
        return DDPMpp(
            tuple(event_shape),
            nf=c.nf,
            ch_mult=tuple(c.ch_mult),
            num_res_blocks=c.num_res_blocks,
            attn_resolutions=tuple(c.attn_resolutions),
            dropout=c.dropout,
            embedding=c.embedding,
            fourier_scale=c.fourier_scale,
            input_fourier=tuple(c.input_fourier),
            key=key,
        )
    raise ValueError(f"unknown model {c.name!r}; choose mlp or ddpmpp.")


def build_optimizer(c) -> tuple[optax.GradientTransformation, Callable]:
    """Adam with linear warm-up lr·min(step/warmup, 1) and global-norm clipping (score_sde's
    ``optimization_manager``); AdamW when ``weight_decay`` > 0 (VDM); the schedule is float32."""
    lr, warmup = float(c.lr), int(c.warmup)

    def schedule(count):
        count = jnp.asarray(count).astype(F32)
        return jnp.asarray(lr, F32) * (jnp.minimum(count / warmup, 1.0) if warmup > 0 else jnp.ones((), F32))

    parts = []
    if c.grad_clip and c.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(float(c.grad_clip)))
    if c.weight_decay and c.weight_decay > 0:
        parts.append(optax.adamw(schedule, b1=c.beta1, b2=c.beta2, eps=c.eps, weight_decay=float(c.weight_decay)))
    else:
        parts.append(optax.adam(schedule, b1=c.beta1, b2=c.beta2, eps=c.eps))
    return optax.chain(*parts), schedule


@eqx.filter_jit
def _initial_state(model_cfg, sde_cfg, optim_cfg, event_shape: tuple[int, ...], seed: int):
    """One compiled initialiser instead of dozens of eager ops, each compiled separately; the
    arguments are hashable configs (static), so a second call with the same ones does not recompile.

    Initialisation draws from the counter-based "unsafe_rbg" generator (XLA RngBitGenerator): it
    compiles several times faster than threefry on CPU and runs once per run (a resumed run restores
    its parameters), so its weaker splitting guarantees do not matter here."""
    tx, _ = build_optimizer(optim_cfg)
    key = jax.random.key(seed, impl="unsafe_rbg")
    model = build_model(model_cfg, event_shape, key)
    if sde_cfg.name == "vdm":  # the network and its learned forward process (training.objectives)
        model = ScheduledNet(model, build_sde(sde_cfg, jax.random.fold_in(key, 1)))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    params = jax.tree.map(lambda a: a.astype(F32), params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32), params=params, ema=jax.tree.map(jnp.copy, params), opt_state=tx.init(params)
    )
    return state, static


def init_state(cfg: Config, event_shape: tuple[int, ...]) -> tuple[TrainState, Any, optax.GradientTransformation, Callable]:
    """(state, static part of the model, optimiser, lr schedule); parameters from ``train.seed``."""
    tx, schedule = build_optimizer(cfg.optim)
    state, static = _initial_state(cfg.model, cfg.sde, cfg.optim, tuple(int(n) for n in event_shape), int(cfg.train.seed))
    return state, static, tx, schedule


# --- loss ---------------------------------------------------------------------------------


def make_loss_fn(static, cfg: Config, *, train: bool = True):
    """loss(params, x0, key) → (batch mean, (per-example values, metrics)) of the configured
    objective (:func:`training.objectives.make_objective`: DSM, high-order DSM or VDM's VLB)."""
    return make_objective(static, cfg, train=train)


# --- step -----------------------------------------------------------------------------------


def make_train_step(static, stream, tx, schedule, cfg: Config, mesh=None):
    """The pure step (state, raw batch, base key) → (state, metrics); jit it with :func:`jit_step`.

    Metrics: ``loss`` (batch mean of the objective's per-example values; for DSM an unbiased
    estimate of J_DSM), ``loss_se`` (its standard error), ``grad_norm`` (before clipping), ``lr``,
    ``state_finite`` (1 if every parameter, EMA and optimiser-state value after the update is finite,
    else 0; the loop saves no state without it), and the objective's own (training.objectives): for
    DSM ``eps_mse_{low,mid,high}_noise`` (mean of ½‖ε − ε̂‖²/D by thirds of log-SNR), for high-order
    DSM each order's term, for VDM the VLB terms, the diffusion term's variance and the schedule's
    endpoints γ₀, γ₁.
    """
    loss_fn = make_loss_fn(static, cfg, train=True)
    discrete = uses_discrete_data(cfg)
    rate = float(cfg.optim.ema_rate)
    global_batch = int(cfg.train.batch_size)
    bsh = shd.batch_sharding(mesh) if mesh is not None else None

    def step(state: TrainState, raw, base_key: PRNGKeyArray):
        key = jax.random.fold_in(base_key, state.step)
        k_data, k_loss = jax.random.split(key)
        x0 = raw if discrete else stream.device_prepare(raw, k_data, global_batch)
        if bsh is not None:
            x0 = jax.lax.with_sharding_constraint(x0, bsh)
        (loss, (terms, obj_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x0, k_loss)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params = jax.tree.map(lambda p, old: p.astype(old.dtype), params, state.params)
        ema = jax.tree.map(lambda e, p: (rate * e + (1.0 - rate) * p).astype(e.dtype), state.ema, params)
        metrics = {
            "loss": loss,
            "loss_se": jnp.std(terms) / jnp.sqrt(jnp.asarray(terms.shape[0], F32)),
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state.step),
            "state_finite": all_finite((params, ema, opt_state)),
            **obj_metrics,
        }
        metrics = {k: v.astype(F32) for k, v in metrics.items()}
        return TrainState(state.step + 1, params, ema, opt_state), metrics

    return step


def jit_step(step, mesh):
    rep = shd.replicated(mesh)
    return jax.jit(step, out_shardings=(rep, rep), donate_argnums=(0,))


# --- loop -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    state: TrainState
    static: Any
    stopped_by_signal: bool
    last_checkpoint: int | None
    last_metrics: dict | None = None


def _config_identity(d: dict) -> dict:
    """The parts of a config dict that must not change across a resume (JSON-normalised)."""
    d = json.loads(json.dumps(d))
    d.pop("name", None)
    d.pop("distributed", None)
    for k in ("num_steps", "log_every", "ckpt_every", "keep", "progress"):
        d["train"].pop(k, None)
    d["data"].pop("data_dir", None)
    d["train"].pop("init_from", None)  # only the start of a run reads it; a resume restores its checkpoint
    return d


class _SigtermFlag:
    def __init__(self):
        self.hit = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not in the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        self.hit = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


def _check_finite(step: int, metrics: dict, ckpt: Checkpointer) -> None:
    """Raise :class:`NonFiniteLossError` if step ``step`` had a non-finite loss or gradient norm, or
    left non-finite parameters, EMA or optimiser state (``state_finite``). Called on every step's
    metrics before the state after it may be saved, so every checkpoint holds a finite state."""
    loss = float(metrics["loss"])
    gnorm = float(metrics["grad_norm"])
    state_ok = float(metrics["state_finite"]) == 1.0
    if math.isfinite(loss) and math.isfinite(gnorm) and state_ok:
        return
    ckpt.wait()
    last = ckpt.latest_step()
    where = f"the last good checkpoint (step {last}) is intact" if last is not None else "no checkpoint was written yet"
    if math.isfinite(loss) and math.isfinite(gnorm):
        what = (f"the update of step {step} made the parameters, their EMA or the optimiser state non-finite "
                f"(loss={loss} and grad_norm={gnorm} were finite)")
    else:
        what = f"non-finite training loss at step {step} (loss={loss}, grad_norm={gnorm})"
    raise NonFiniteLossError(
        f"{what}; stopping; the state after it was not saved. {where}. "
        "Lower optim.lr, check the data, or raise sde.t_min."
    )


def train(cfg: Config, workdir: str | os.PathLike, *, resume: bool = False, log=print) -> RunResult:
    """Run (or continue) training as configured; see the module docstring. ``cfg`` is checked by
    :func:`training.configs.validate` first. Every step's loss, gradient norm and updated state are
    checked finite before that state may be saved (:class:`NonFiniteLossError` otherwise)."""
    validate(cfg)
    shd.maybe_initialize_distributed(cfg.distributed)
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0
    mesh = shd.make_mesh()
    n_dev = mesh.devices.size
    B = int(cfg.train.batch_size)
    if B % n_dev:
        raise ValueError(f"train.batch_size={B} must be divisible by the number of devices ({n_dev}).")

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), write=True, keep=cfg.train.keep, every=cfg.train.ckpt_every)
    cfg_path = os.path.join(workdir, "config.json")
    latest = ckpt.latest_step()
    if latest is not None and not resume:
        raise FileExistsError(
            f"{workdir} already holds checkpoints (latest step {latest}); pass --resume to continue, or use a new --workdir."
        )
    if latest is not None and os.path.exists(cfg_path):
        with open(cfg_path) as f:
            saved = json.load(f)
        if _config_identity(saved) != _config_identity(config_to_dict(cfg)):
            raise ValueError(
                f"--resume: the config differs from the one in {cfg_path} in fields that change the run "
                "(only train.num_steps, log_every, ckpt_every, keep, progress and data.data_dir may change)."
            )

    stream = make_stream(cfg.data, B, cfg.train.seed, jax.process_index(), jax.process_count())
    state, static, tx, schedule = init_state(cfg, tuple(stream.event_shape))
    state = jax.device_put(state, shd.replicated(mesh))
    if latest is not None:
        state = ckpt.restore(latest, state)
        if is_main:
            log(f"resumed from checkpoint step {latest} in {ckpt.directory}")
    elif resume and is_main:
        log(f"--resume: no checkpoint in {ckpt.directory}; starting from step 0")
    if latest is None and cfg.train.init_from:
        state = _init_from(state, cfg, event_shape=tuple(stream.event_shape))
        if is_main:
            log(f"initialised the parameters from {cfg.train.init_from} (its latest checkpoint's EMA)")
    if is_main:
        with open(cfg_path, "w") as f:
            json.dump(config_to_dict(cfg), f, indent=2, sort_keys=True)

    start = int(state.step)
    writer = MetricsWriter(os.path.join(workdir, "metrics.jsonl"), enabled=is_main, truncate_after=start)
    step_fn = jit_step(make_train_step(static, stream, tx, schedule, cfg, mesh), mesh)
    base_key = jax.device_put(jax.random.PRNGKey(cfg.train.seed), shd.replicated(mesh))

    pbar = None
    if is_main and cfg.train.progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=cfg.train.num_steps, initial=start, desc=cfg.name, dynamic_ncols=True, file=sys.stderr)

    stopped = False
    pending: tuple[int, dict] | None = None
    t_window, n_window, loss_sum = time.perf_counter(), 0, 0.0
    last_saved = latest
    with _SigtermFlag() as sig:
        for step in range(start, cfg.train.num_steps):
            raw = shd.host_to_global(stream.host_batch(step), mesh, B)
            state, metrics = step_fn(state, raw, base_key)
            if pending is not None:  # check the previous step while this one runs
                _check_finite(*pending, ckpt)
                loss_sum += float(pending[1]["loss"])
                n_window += 1
            pending = (step, metrics)
            done = step + 1
            if pbar is not None:
                pbar.update(1)
            must_save = (done % cfg.train.ckpt_every == 0) or sig.hit or done == cfg.train.num_steps
            must_log = done % cfg.train.log_every == 0 or done == cfg.train.num_steps
            if must_save or must_log:
                _check_finite(*pending, ckpt)
                loss_sum += float(pending[1]["loss"])
                n_window += 1
                pending = None
            if must_log:
                now = time.perf_counter()
                dt = (now - t_window) / max(n_window, 1)
                rec = {"step": done, **{k: float(v) for k, v in metrics.items()}}
                rec.update(loss_window_mean=loss_sum / max(n_window, 1), step_time_s=dt, images_per_s=B / dt,
                           wall_time=time.time())
                writer.write(rec)
                if pbar is not None:
                    pbar.set_postfix(loss=f"{rec['loss_window_mean']:.4g}", lr=f"{rec['lr']:.2e}")
                t_window, n_window, loss_sum = now, 0, 0.0
            if must_save:
                if ckpt.save(done, state, force=sig.hit or done == cfg.train.num_steps):
                    last_saved = done
            if sig.hit:
                ckpt.wait()
                stopped = True
                if is_main:
                    log(f"SIGTERM: saved checkpoint at step {done} in {ckpt.directory}; rerun with --resume to continue.")
                break
    if pending is not None:
        _check_finite(*pending, ckpt)
    if pbar is not None:
        pbar.close()
    ckpt.close()
    last_metrics = metrics if cfg.train.num_steps > start else None
    return RunResult(state=state, static=static, stopped_by_signal=stopped, last_checkpoint=last_saved,
                     last_metrics=last_metrics)


def _init_from(state: TrainState, cfg: Config, event_shape) -> TrainState:
    """Fine-tuning: parameters and EMA of a new run from the EMA parameters of the latest checkpoint
    of ``cfg.train.init_from`` (another training work directory with the same network); the step
    and the optimiser state stay fresh (Lu et al. 2022 fine-tune first-order models this way)."""
    src = os.path.abspath(os.fspath(cfg.train.init_from))
    path = os.path.join(src, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"train.init_from={cfg.train.init_from!r}: no config.json there; give a training work directory.")
    from training.evaluate import config_from_dict

    with open(path) as f:
        src_cfg = config_from_dict(json.load(f), source=path)
    if config_to_dict(src_cfg)["model"] != config_to_dict(cfg)["model"] or src_cfg.sde.name != cfg.sde.name:
        raise ValueError(
            f"train.init_from={cfg.train.init_from!r}: its model/SDE ({src_cfg.model}, sde={src_cfg.sde.name}) differ from "
            f"this run's ({cfg.model}, sde={cfg.sde.name}); fine-tuning needs the same network."
        )
    src_state, _ = load_state(src_cfg, src)
    ema = jax.tree.map(lambda a, like: jax.device_put(a.astype(like.dtype), like.sharding), src_state.ema, state.params)
    return TrainState(step=state.step, params=ema, ema=jax.tree.map(jnp.copy, ema), opt_state=state.opt_state)


def load_state(cfg: Config, workdir: str | os.PathLike, step: int | None = None) -> tuple[TrainState, Any]:
    """(state, static) from the checkpoint ``step`` (latest if None) of ``workdir``; the model is
    ``eqx.combine(state.params, static)`` (or ``state.ema``)."""
    state, static, _, _ = init_state(cfg, event_shape_of(cfg.data))  # reads no data
    ckpt = Checkpointer(os.path.join(os.fspath(workdir), "checkpoints"))  # read-only: a live trainer may be writing
    try:
        return ckpt.restore(step, state), static
    finally:
        ckpt.close()
