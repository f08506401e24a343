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

import contextlib
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
import numpy as np
import optax
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

import numerics
from training import sharding as shd
from training.checkpoint import Checkpointer
from training.configs import Config, config_to_dict, config_to_json, validate
from training.data import event_shape_of, make_stream
from training.fileio import DirectoryBusyError, lock_directory, read_json, write_atomic
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


def ema_update(ema: PyTree, params: PyTree, step: Int[Array, ""], rate: float, warmup: bool) -> PyTree:
    """The EMA after the update of step ``step`` (0 for the first): ``d·ema + (1 − d)·params`` with
    d = ``rate``, or with ``warmup`` d = min(rate, (1 + step)/(10 + step)) (:class:`training.configs.OptimConfig`)."""
    d = jnp.asarray(rate, F32)
    if warmup:
        n = step.astype(F32)
        d = jnp.minimum(d, (1.0 + n) / (10.0 + n))
    # e + (1 − d)(p − e): as the product form, but 1 − EMA of a constant stream keeps its relative precision
    return jax.tree.map(lambda e, p: (e + (1.0 - d) * (p - e)).astype(e.dtype), ema, params)


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
    rate, warmup = float(cfg.optim.ema_rate), bool(cfg.optim.ema_warmup)
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
        ema = ema_update(state.ema, params, state.step, rate, warmup)
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


# Config fields a resume may change (``section.*``: the whole section); every other field is the
# run's identity, checked against the saved config.json by :func:`_check_resume_config`.
_RESUME_MAY_CHANGE = ("name", "distributed.*", "train.num_steps", "train.log_every", "train.ckpt_every", "train.keep",
                      "train.progress", "train.init_from", "data.data_dir")  # init_from: only a run's start reads it


def _config_identity(d: dict) -> dict:
    """The parts of a config dict that must not change across a resume (JSON-normalised)."""
    d = json.loads(json.dumps(d))
    for key in _RESUME_MAY_CHANGE:
        section, _, field = key.partition(".")
        if not field or field == "*":
            d.pop(section, None)
        else:
            d.get(section, {}).pop(field, None)
    return d


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"section.field": value}`` of a nested config dict."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _differences(saved: dict, given: dict) -> list[str]:
    """``"section.field: saved X, given Y"`` for each field in which two config dicts differ."""
    a, b = _flat(json.loads(json.dumps(saved))), _flat(json.loads(json.dumps(given)))
    missing = "(absent)"
    return [f"{k}: saved {json.dumps(a.get(k, missing))}, given {json.dumps(b.get(k, missing))}"
            for k in sorted(a.keys() | b.keys()) if a.get(k, missing) != b.get(k, missing)]


def _read_run_config(path: str, *, fix: str) -> Config:
    """The config saved in ``path`` (a work directory's config.json), checked by
    training.evaluate.config_from_dict; a file that cannot be read as JSON raises a ValueError naming it and
    ending with ``fix`` (training.fileio.read_json)."""
    from training.evaluate import config_from_dict

    return config_from_dict(read_json(path, fix=fix), source=path)


def _check_resume_config(cfg: Config, cfg_path: str, latest: int, ckpt_dir: str) -> None:
    """A resume continues the run its checkpoints belong to: the saved config.json must exist, be
    readable and agree with ``cfg`` in every field outside :data:`_RESUME_MAY_CHANGE`."""
    fix = (f"restore it from a copy of the run (it records the config of the checkpoints in {ckpt_dir}), "
           "or start afresh in a new --workdir.")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"--resume: {ckpt_dir} holds checkpoints (latest step {latest}) but {cfg_path} is "
                                f"missing, so this config cannot be checked against the run's; {fix}")
    saved = config_to_dict(_read_run_config(cfg_path, fix=fix))
    diffs = _differences(_config_identity(saved), _config_identity(config_to_dict(cfg)))
    if diffs:
        raise ValueError(
            f"--resume: the config differs from the one in {cfg_path} in fields that change the run: {'; '.join(diffs)}. "
            f"Only {', '.join(_RESUME_MAY_CHANGE)} may change; give the saved values, or start afresh in a new --workdir."
        )


DATA_RECORD = "data.json"  # the fingerprint of the training data, beside config.json


def saved_data_fingerprint(workdir: str) -> tuple[str | None, str]:
    """(fingerprint, path) of the training data recorded in ``DIR/data.json`` (None where a run predates
    the record), for every check that the data in hand are those a run trained on: a resume
    (:func:`_check_training_data`) and the dequantiser fitted to a trained model (training.dequant)."""
    path = os.path.join(workdir, DATA_RECORD)
    if not os.path.exists(path):
        return None, path
    saved = read_json(path, fix="restore it from a copy of the run, or delete it to skip the check.")
    return (saved.get("fingerprint") if isinstance(saved, dict) else None), path


def _check_training_data(workdir: str, stream, cfg: Config, latest: int | None) -> dict:
    """The record of this run's training data (``DIR/data.json``: :func:`training.data.array_fingerprint`
    of every training image, or of the mixture's parameters, and the data section). A resume must train
    on the data the run started on: the same config can name other data (a changed or replaced CIFAR-10
    folder; the embedded digits gained a held-out split in session 12), so a differing fingerprint raises
    a ValueError naming both. A run that predates the record is resumed and recorded."""
    record = {"fingerprint": stream.fingerprint(), "data": config_to_dict(cfg)["data"]}
    if latest is None or not os.path.exists(os.path.join(workdir, DATA_RECORD)):
        return record
    old, path = saved_data_fingerprint(workdir)
    if old != record["fingerprint"]:
        raise ValueError(
            f"--resume: the training data differ from those the run in {workdir} started on (fingerprint {old} in "
            f"{path}, {record['fingerprint']} now, for data {json.dumps(record['data'], sort_keys=True)}); the "
            f"checkpoints would go on training on other data. Point data.data_dir at the run's data, or start "
            f"afresh in a new --workdir."
        )
    return record


class _SigtermFlag:
    """Sets ``hit`` when this process receives SIGTERM (while the block runs, in the main thread).
    Each process of a multi-host run has its own flag: act on :func:`_any_process` of it."""

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


def _any_process(flag: bool) -> bool:
    """True if ``flag`` is true on any process of the run. Every process must call it at the same
    point: with more than one process it is a collective (an all-gather of one number per process,
    jax.experimental.multihost_utils.process_allgather); with one it is ``flag`` itself, at no cost.

    The training loop asks it whether any process got SIGTERM, so that all processes save (orbax's
    save is collective) and stop at the same step; a decision on the local flag alone could make
    one process wait forever in a save the others never start."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(bool(flag), np.int32))))


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


SIGTERM_POLL_STEPS = 10  # multi-process runs: steps between agreements on SIGTERM (one process: every step)
LOCK_NAME = ".train.lock"  # in the work directory: held by process 0 of the trainer using it


@contextlib.contextmanager
def _workdir_lock(workdir: str):
    """Hold ``<workdir>/.train.lock`` (training.fileio.lock_directory) while the block runs, on
    process 0 only: the hosts of a multi-host run share the work directory. If another trainer holds
    it, every process raises :class:`training.fileio.DirectoryBusyError` (process 0 naming the
    holder), before anything in the work directory is touched."""
    fix = ("wait for that run to end, or stop it (SIGTERM saves a checkpoint) and continue it with --resume; "
           "or train in another --workdir.")
    with contextlib.ExitStack() as stack:
        busy = None
        if jax.process_index() == 0:
            try:
                stack.enter_context(lock_directory(workdir, LOCK_NAME, what="training", fix=fix))
            except DirectoryBusyError as e:
                busy = e
        if _any_process(busy is not None):
            raise busy or DirectoryBusyError(f"{workdir} is in use by another trainer (process 0 could not take its "
                                             f"lock {os.path.join(workdir, LOCK_NAME)}); {fix}")
        yield


def train(cfg: Config, workdir: str | os.PathLike, *, resume: bool = False, log=print) -> RunResult:
    """Run (or continue) training as configured; see the module docstring. ``cfg`` is checked by
    :func:`training.configs.validate` first. Every step's loss, gradient norm and updated state are
    checked finite before that state may be saved (:class:`NonFiniteLossError` otherwise).

    One trainer at a time per work directory: the run holds the lock ``<workdir>/.train.lock``
    (:func:`_workdir_lock`), and a second trainer there raises
    :class:`training.fileio.DirectoryBusyError` naming the process that trains there. Readers
    (evaluation, sampling, the dequantiser) do not take it."""
    validate(cfg)
    shd.maybe_initialize_distributed(cfg.distributed)
    workdir = os.path.abspath(os.fspath(workdir))
    os.makedirs(workdir, exist_ok=True)
    with _workdir_lock(workdir):
        return _train_locked(cfg, workdir, resume=resume, log=log)


def _train_locked(cfg: Config, workdir: str, *, resume: bool, log) -> RunResult:
    """The body of :func:`train`, run under the work directory's lock."""
    is_main = jax.process_index() == 0
    n_proc = jax.process_count()
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
    if latest is not None:
        _check_resume_config(cfg, cfg_path, latest, ckpt.directory)

    stream = make_stream(cfg.data, B, cfg.train.seed, jax.process_index(), jax.process_count())
    data_record = _check_training_data(workdir, stream, cfg, latest)
    state, static, tx, schedule = init_state(cfg, tuple(stream.event_shape))
    state = jax.device_put(state, shd.replicated(mesh))
    if latest is not None:
        state = ckpt.restore(latest, state)
        if is_main:
            log(f"resumed from checkpoint step {latest} in {ckpt.directory}")
    elif resume and is_main:
        log(f"--resume: no checkpoint in {ckpt.directory}; starting from step 0")
    if latest is None and cfg.train.init_from:
        state = _init_from(state, cfg, event_shape=tuple(stream.event_shape), log=log if is_main else None)
        if is_main:
            log(f"initialised the parameters from {cfg.train.init_from} (its latest checkpoint's EMA)")
    if is_main:  # atomically: a kill while it is written must not leave the checkpoints without their config
        write_atomic(cfg_path, config_to_json(cfg))
        write_atomic(os.path.join(workdir, DATA_RECORD), json.dumps(data_record, indent=2))

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
            # the same answer on every process, so all save and stop together; with several processes
            # this is a collective that waits for the step just dispatched, so it is asked every
            # SIGTERM_POLL_STEPS steps (and where the loop syncs anyway), not every step
            must_log = done % cfg.train.log_every == 0 or done == cfg.train.num_steps
            scheduled_save = done % cfg.train.ckpt_every == 0 or done == cfg.train.num_steps
            poll = n_proc == 1 or must_log or scheduled_save or done % SIGTERM_POLL_STEPS == 0
            stop = _any_process(sig.hit) if poll else False
            must_save = scheduled_save or stop
            if must_save or must_log:
                _check_finite(*pending, ckpt)
                loss_sum += float(pending[1]["loss"])
                n_window += 1
                pending = None
            if must_log:
                now = time.perf_counter()
                dt = (now - t_window) / max(n_window, 1)
                rec = {"step": done, **{k: float(v) for k, v in metrics.items()}}
                # the window: the steps since the previous record, or since the checkpoint a resume started from
                rec.update(loss_window_mean=loss_sum / max(n_window, 1), loss_window_n=n_window, step_time_s=dt,
                           images_per_s=B / dt, wall_time=time.time())
                writer.write(rec)
                if pbar is not None:
                    pbar.set_postfix(loss=f"{rec['loss_window_mean']:.4g}", lr=f"{rec['lr']:.2e}")
                t_window, n_window, loss_sum = now, 0, 0.0
            if must_save:
                if ckpt.save(done, state, force=stop or done == cfg.train.num_steps):
                    last_saved = done
            if stop:
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


def _init_from(state: TrainState, cfg: Config, event_shape, log=None) -> TrainState:
    """Fine-tuning: parameters and EMA of a new run from the EMA parameters of the latest checkpoint
    of ``cfg.train.init_from`` (another training work directory with the same network); the step
    and the optimiser state stay fresh (Lu et al. 2022 fine-tune first-order models this way).

    The same network means: the same ``model`` section, the same SDE (for ``vdm``, whose learned
    schedule is part of the parameters, the whole ``sde`` section), the same example shape, and
    then source parameters of the same tree structure, shapes and dtypes as this run's; anything
    else raises a ValueError naming ``train.init_from`` and each difference (saved vs given).

    The other SDEs' settings (β_min, β_max, σ_max, t_min, ...) may differ: e.g. Lu et al.'s
    fine-tuning keeps the network but a user may evaluate or fine-tune down to a smaller t_min. Each
    difference is reported through ``log`` (a warning: the network learnt the saved SDE's scores)."""
    name = f"train.init_from={cfg.train.init_from!r}"
    src = os.path.abspath(os.fspath(cfg.train.init_from))
    path = os.path.join(src, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{name}: no config.json there; give a training work directory.")
    src_cfg = _read_run_config(path, fix="restore it, or give another training work directory as train.init_from.")

    def network(c: Config) -> dict:
        d = config_to_dict(c)
        return {"model": d["model"], "sde": d["sde"] if "vdm" in (cfg.sde.name, src_cfg.sde.name) else {"name": c.sde.name}}

    diffs = _differences(network(src_cfg), network(cfg))
    src_shape, shape = tuple(event_shape_of(src_cfg.data)), tuple(int(n) for n in event_shape)
    if src_shape != shape:
        diffs.append(f"example shape (data.*): saved {src_shape}, given {shape}")
    if diffs:
        raise ValueError(f"{name}: fine-tuning needs the same network, but the source run's config (saved, {path}) "
                         f"and this run's (given) differ in {'; '.join(diffs)}.")
    sde_diffs = _differences({"sde": config_to_dict(src_cfg)["sde"]}, {"sde": config_to_dict(cfg)["sde"]})
    if sde_diffs and log is not None:
        log(f"warning: {name}: the source run was trained under other SDE settings ({'; '.join(sde_diffs)}); its "
            f"network learnt the scores of the saved SDE. Fine-tuning goes on under the given one; if that was not "
            f"intended, stop and rerun with the saved sde.* values.")
    src_state, _ = load_state(src_cfg, src)
    if jax.tree.structure(src_state.ema) != jax.tree.structure(state.params):
        raise ValueError(f"{name}: fine-tuning needs the same network, but the source's parameters have another tree "
                         f"structure ({len(jax.tree.leaves(src_state.ema))} arrays saved, "
                         f"{len(jax.tree.leaves(state.params))} given).")
    leaves = jax.tree_util.tree_leaves_with_path(src_state.ema)
    diffs = [f"params{jax.tree_util.keystr(p)}: saved {a.dtype}{list(a.shape)}, given {b.dtype}{list(b.shape)}"
             for (p, a), b in zip(leaves, jax.tree.leaves(state.params)) if (a.shape, a.dtype) != (b.shape, b.dtype)]
    if diffs:
        raise ValueError(f"{name}: fine-tuning needs the same network, but the source's parameters differ in shape "
                         f"or dtype: {'; '.join(diffs)}.")
    ema = jax.tree.map(lambda a, like: jax.device_put(a, like.sharding), src_state.ema, state.params)
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
