"""Evaluate a trained model on its test set: bits/dim (images) or nats (mixtures) from the
probability-flow ODE, Song et al.'s bound and VDM's VLB. Resumable and sharded over devices.

Usage::

    python -m training eval --workdir DIR [--metrics ode,bound,vlb] [--step N] [--no-ema]
        [--batch-size 128] [--n-probes 4] [--divergence auto] [--tol 1e-5] [--bound-draws 16]
        [--vlb-draws 16] [--vlb-t is|uniform] [--vlb-data auto|discrete|dequantized]
        [--dequant uniform|variational] [--seed 0] [--limit N]
        [--num-examples 4096] [--data-seed 0] [--data-dir DIR] [--split test] [--out FILE]

**Test set** (from ``DIR/config.json``, ``data``): ``cifar10`` is the test split of the archive at
``--data-dir`` (default ``data.data_dir``); ``digits`` the 297 embedded 8×8 digits held out from
training (``--split train``: the 1500 the presets train on); ``mixture`` is ``--num-examples`` fresh samples of the
mixture from the key ``fold_in(key(--data-seed), 0x7E57)``, independent of ``--seed`` and of the
training samples. ``--limit N`` keeps the first N examples.

**Metrics** (``--metrics``, default all three), per example with a Monte Carlo standard error;
the reported SE of a mean is the spread over examples / √n (it contains the MC noise):

* ``ode`` — −log p^ODE(x) by the probability-flow ODE dx/dt = f(t)x − ½g(t)² s_θ(x, t) and the
  instantaneous change of variables (Song, Durkan, Murray & Ermon 2021, *Maximum Likelihood
  Training of Score-Based Diffusion Models*, §4.3 / Song et al. 2021b Eq. 13; THEORY.md §2.1),
  solved in graph by :func:`numerics.likelihood.ode_log_likelihood` (Tsit5, rtol = atol =
  ``--tol``). Divergence exact for D ≤ 16, else Hutchinson–Skilling with ``--n-probes`` Rademacher
  probes (THEORY.md §2.8); the probes' spread is the per-example SE. Mean NFE reported.
* ``bound`` — Song et al. 2021's variational bound with the ε-offset (Theorem 2 on [ε, T] plus the
  Tweedie decoder on [0, ε]; THEORY.md §2.4, §2.7) by :func:`training.evaluate.eps_offset_bound`:
  t importance-sampled from p(t) ∝ g²/σ² (§2.6), stratified over ``--bound-draws`` draws.
* ``vlb`` — VDM's −VLB = prior + reconstruction + diffusion L_∞ (Kingma, Salimans, Poole & Ho 2021,
  *Variational Diffusion Models*, Eq. 11 with Eq. 17; THEORY.md §4.2), each term reported,
  averaged over ``--vlb-draws`` draws per example. ``--vlb-t uniform`` is exactly
  :func:`numerics.vdm.vdm_loss` (t ~ U[t_min, T], antithetic over the batch, as VDM's code);
  ``--vlb-t is`` (default) takes the same prior and reconstruction terms (numerics.vdm) and
  estimates the same L_∞ = ½∫γ'(t)‖ε − ε̂‖²dt at t ~ p(t) ∝ γ'(t) = g²/σ² (THEORY.md §2.6, §4.7),
  stratified over the draws: for the VP SDE with t_min = 1e-5 uniform t leaves a variance that grows
  like 1/t_min (STACK_NOTES pitfall 7), importance sampling removes it. Images (``--vlb-data``,
  default ``auto`` = the data the model was trained on, ``training.objectives.uses_discrete_data``):
  ``discrete`` — VDM's discrete decoder on the 8-bit pixels (App. C), a bound on −log P(k) with no
  dequantisation, bits/dim = nats/(D ln 2); the default for a model trained with it (``cifar10_vdm``,
  ``digits_vdm``). ``dequantized`` — the Gaussian decoder on the same dequantised data as ``ode``
  and ``bound`` (``--dequant``), bits/dim as theirs, so the three are paired; the default for a model
  trained on dequantised data (every DSM config, ``loss.vdm_data=continuous``). Continuous data: the
  Gaussian decoder.

**Images, dequantisation** (``ode``, ``bound``, and ``vlb`` with ``--vlb-data dequantized``; THEORY.md
§2.9): ``--dequant uniform`` uses y = (k + u)/256, u ~ U[0,1)^D (:func:`training.data.dequantize`);
``--dequant variational`` uses the
q(u|k) flow trained by ``python -m training dequant --workdir DIR`` (:mod:`training.dequant`) and
reports E_q[−log p(x) + log q(u|k)] (Ho et al. 2019; Song et al. 2021 §5). In both cases
bits/dim = (−log p_X(x) + log q)/(D ln 2) + 8 − log₂ 2 (:func:`numerics.likelihood.bits_per_dim`,
data centred to [−1, 1]). For the 2-D/low-D mixtures everything is in nats and nats/dim, and the
exact −log q(x) of the data mixture is reported beside the model numbers (its mean estimates the
entropy H(q)), with each metric's paired excess over it.

**Devices.** Each batch is split over ``jax.devices()`` on its batch axis (a ``NamedSharding`` of
:mod:`training.sharding`; model replicated), so every jitted solve runs data-parallel;
``--batch-size`` must be a multiple of the device count. The last, partial batch is padded with
copies of its last example (dropped afterwards) so one compiled shape serves all batches.

**Resuming.** Per-batch results (per-example values in nats, SEs, NFE, log q) are appended, flushed
and fsynced after every batch to ``DIR/eval/<tag>/<metric>-<options>.jsonl``, where
``<tag> = step<step>-<ema|raw>-seed<seed>-bs<batch>-<data>`` (the ODE file's name also holds the
device count: its adaptive steps depend on the split of a batch). A rerun with the same options skips
the finished batches (and says so). Every random draw of batch b comes from
``fold_in(key(--seed), b)``, so an interrupted and resumed evaluation gives exactly the numbers of
an uninterrupted one. A batch is reused only for the same examples (each record holds a hash of its
examples) and the same model (the file's header holds a fingerprint of the parameters evaluated): a file
written for other settings, e.g. by a run retrained in the same directory, is refused with a message
naming what differs. Each record names the platform, device kind and JAX version that computed it; the
summary lists them per metric (``computed_on``) and the run says when a metric's batches come from more
than one (a resume elsewhere agrees to the solver's tolerance, not bitwise).

**Output.** A summary JSON (schema ``training.eval_run/2``), by default ``DIR/eval_step<step>_<deq>.json``
beside ``DIR/checkpoints`` (``<deq>``: ``uniform``, ``variational`` or ``continuous`` for
mixtures; ``_raw`` appended with ``--no-ema``, and the split, examples, seed or metrics when not the
defaults, e.g. ``eval_step300_uniform_train_limit100.json``: :func:`summary_variant`; ``--out FILE``
overrides), holding every number
with its SE and unit, n, NFE, the options, the checkpoint step and the dequantisation each number
used; and a short table on screen.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from jaxtyping import Float, Shaped

from training.fileio import DirectoryBusyError, drop_partial_last_line, fsync_dir, lock_directory, write_atomic

__all__ = [
    "METRICS",
    "SCHEMA",
    "EvalError",
    "TestSet",
    "add_arguments",
    "run",
    "load_test_set",
    "evaluate_workdir",
    "summary_path",
    "summary_variant",
    "vlb_data_mode",
]

METRICS: tuple[str, ...] = ("ode", "bound", "vlb")
DEFAULT_NUM_EXAMPLES = 4096  # mixture data: fresh test samples (--num-examples)
VLB_DATA: tuple[str, ...] = ("auto", "discrete", "dequantized")
SCHEMA = "training.eval_run/2"
EXACT_MAX_DIM = 16  # training.evaluate.ode_nll's default: exact trace up to D = 16
TEST_SET_FOLD = 0x7E57  # mixture test set: fold_in(key(data_seed), TEST_SET_FOLD)
_KEY_DEQUANT, _KEY_PROBES, _KEY_BOUND, _KEY_VLB = 0, 1, 2, 3  # fold_in ids under the batch key


LOCK_NAME = ".lock"  # in each DIR/eval/<tag>/: held while an evaluation with those options runs


class EvalError(ValueError):
    """Bad input to the evaluation (names the argument and the fix); the CLI exits with code 2."""


# --- command line ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", required=True, help="training work directory (config.json, checkpoints/)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate the EMA parameters (default) or, with --no-ema, the raw ones")
    p.add_argument("--metrics", default=",".join(METRICS),
                   help="comma-separated subset of ode,bound,vlb (default: all)")
    p.add_argument("--batch-size", type=int, default=128,
                   help="examples per batch, split over the devices (a multiple of the device count)")
    p.add_argument("--n-probes", type=int, default=4, help="Hutchinson probes per example (ode, D > 16)")
    p.add_argument("--divergence", choices=("auto", "exact", "hutchinson"), default="auto",
                   help="ode divergence: auto = exact for D <= 16, else Hutchinson")
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of the ODE solver")
    p.add_argument("--bound-draws", type=int, default=16, help="Monte Carlo draws of t per example (bound)")
    p.add_argument("--vlb-draws", type=int, default=16, help="Monte Carlo draws of t per example (vlb)")
    p.add_argument("--vlb-t", choices=("is", "uniform"), default="is",
                   help="vlb time sampling: is = importance-sampled, stratified (default); uniform = VDM's antithetic")
    p.add_argument("--vlb-data", choices=VLB_DATA, default="auto",
                   help="images, vlb: discrete = VDM's discrete decoder on the pixels; dequantized = Gaussian decoder "
                        "on the dequantised data of ode/bound; auto (default) = what the model was trained on")
    p.add_argument("--dequant", choices=("uniform", "variational"), default="uniform",
                   help="dequantisation of 8-bit images for ode and bound (variational: python -m training dequant)")
    p.add_argument("--seed", type=int, default=0, help="seed of every Monte Carlo draw (per batch: fold_in(seed, batch))")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test examples")
    p.add_argument("--num-examples", type=int, default=DEFAULT_NUM_EXAMPLES, help="mixture data: number of fresh test samples")
    p.add_argument("--data-seed", type=int, default=0, help="mixture data: seed of the test samples")
    p.add_argument("--data-dir", default=None, help="CIFAR-10: the archive or folder (default: data.data_dir of config.json)")
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="split to evaluate: CIFAR-10's test or train set; digits: the 297 held-out or the 1500 "
                        "training images (mixtures: fresh samples, no split)")
    p.add_argument("--out", default=None, help="summary JSON path (default DIR/eval_step<step>_<dequant>.json, with "
                                               "the split, examples, seed or metrics appended when not the defaults)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="tqdm progress bars")


def run(args: argparse.Namespace) -> int:
    """The ``eval`` sub-command: 0 on success, 2 on bad input, 3 if an ODE solve failed."""
    from numerics.likelihood import SolverError

    try:
        summary = evaluate_workdir(
            args.workdir, step=args.step, ema=args.ema, metrics=args.metrics, batch_size=args.batch_size,
            n_probes=args.n_probes, divergence=args.divergence, tol=args.tol, bound_draws=args.bound_draws,
            vlb_draws=args.vlb_draws, vlb_t=args.vlb_t, vlb_data=args.vlb_data, dequant=args.dequant, seed=args.seed, limit=args.limit,
            num_examples=args.num_examples, data_seed=args.data_seed, data_dir=args.data_dir, split=args.split,
            out=args.out, progress=args.progress,
        )
    except (EvalError, DirectoryBusyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SolverError as e:
        print(f"error: {e} The batches finished so far are kept, but the same options fail again at this batch (the "
              "computation is deterministic): rerun with a looser --tol (the ODE's batches are then computed anew, in "
              "a file of their own; the other metrics' batches are reused).", file=sys.stderr)
        return 3
    print(format_table(summary))
    print(f"wrote {summary['summary_path']}")
    return 0


# --- options and validation ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Options:
    metrics: tuple[str, ...]
    batch_size: int
    n_probes: int
    divergence: str
    tol: float
    bound_draws: int
    vlb_draws: int
    vlb_t: str
    vlb_data: str
    dequant: str
    seed: int
    limit: int | None
    num_examples: int
    data_seed: int
    data_dir: str | None
    split: str


def _parse_metrics(metrics: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return METRICS
    items = [m.strip() for m in metrics.split(",")] if isinstance(metrics, str) else [str(m).strip() for m in metrics]
    items = [m for m in items if m]
    bad = [m for m in items if m not in METRICS]
    if bad or not items:
        raise EvalError(
            f"--metrics: unknown metric(s) {', '.join(repr(b) for b in bad) or '(none given)'}; "
            f"choose a comma-separated subset of {','.join(METRICS)} (e.g. --metrics ode,bound)."
        )
    return tuple(m for m in METRICS if m in items)  # canonical order, no duplicates


def _positive(name: str, value, minimum: int = 1) -> None:
    if value is None or int(value) != value or value < minimum:
        raise EvalError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def _check_workdir(workdir: str, step: int | None) -> tuple[dict, int]:
    """(config dict, checkpoint step) by training.evaluate.locate_checkpoint, as an EvalError."""
    from training.evaluate import WorkdirError, locate_checkpoint

    try:
        return locate_checkpoint(workdir, step)
    except WorkdirError as e:
        raise EvalError(str(e)) from e


# --- data ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TestSet:
    """The examples to evaluate. ``kind``: "image" (uint8 (N, C, H, W)) or "continuous" (float64
    (N, D)); ``mixture``: the numerics.GaussianMixture of mixture data (else None); ``info``: what
    goes into the summary; ``tag``: identifies the examples in the per-batch file names."""

    kind: str
    examples: Shaped[np.ndarray, "N *event"]
    mixture: Any
    info: dict
    tag: str

    @property
    def dims(self) -> int:
        return int(np.prod(self.examples.shape[1:]))

    def __len__(self) -> int:
        return int(self.examples.shape[0])


def load_test_set(cfg, *, limit: int | None = None, num_examples: int = DEFAULT_NUM_EXAMPLES, data_seed: int = 0,
                  data_dir: str | None = None, split: str = "test") -> TestSet:
    """The test examples of a training config (see the module docstring)."""
    import jax

    from training.data import get_mixture, load_cifar10, load_digits

    name = cfg.data.name
    if name == "mixture":
        q = get_mixture(cfg.data.mixture)
        key = jax.random.fold_in(jax.random.key(int(data_seed)), TEST_SET_FOLD)
        x = np.asarray(q.sample(key, int(num_examples)), np.float64)
        x = x if limit is None else x[:limit]
        info = dict(name="mixture", mixture=cfg.data.mixture, num_examples=int(num_examples), data_seed=int(data_seed),
                    sampling=f"mixture.sample(fold_in(key({data_seed}), {TEST_SET_FOLD:#x}), {num_examples})")
        return TestSet("continuous", x, q, info, f"mixture-{cfg.data.mixture}-n{num_examples}-ds{data_seed}")
    if name == "digits":
        ds = load_digits(split)
        info = dict(name="digits", split=split, held_out=split != cfg.data.split,  # not the split trained on
                    note="the embedded 8x8 digits: the presets train on the first 1500 ('train'), the last 297 are "
                         "held out ('test'; training.data.load_digits)")
        tag = f"digits-{split}"
    elif name == "cifar10":
        path = data_dir or cfg.data.data_dir
        if not path:
            raise EvalError("CIFAR-10 test set: pass --data-dir DIR (cifar-10-python.tar.gz or its extracted folder).")
        try:
            ds = load_cifar10(path, split)
        except (FileNotFoundError, ValueError) as e:
            raise EvalError(f"CIFAR-10 test set ({'--data-dir' if data_dir else 'data.data_dir of config.json'}): {e}") from e
        info = dict(name="cifar10", split=split, held_out=split != cfg.data.split, data_dir=os.path.abspath(path))
        tag = f"cifar10-{split}"
    else:
        raise EvalError(f"config.json: unknown data set {name!r}; eval supports mixture, digits and cifar10.")
    images = ds.images if limit is None else ds.images[:limit]
    info.update(centered=bool(cfg.data.centered))
    return TestSet("image", images, None, info, tag)


# --- model -----------------------------------------------------------------------------------------


def _load_model(workdir: str, step: int, ema: bool, cfg_dict: dict, data_dir: str | None):
    """training.evaluate.load_model (it reads no data, so ``--data-dir`` only matters for the test set)."""
    from training.evaluate import load_model

    del cfg_dict, data_dir
    return load_model(workdir, step, ema=ema)


def _load_dequantizer(workdir: str):
    import importlib

    try:
        deq_mod = importlib.import_module("training.dequant")
    except ModuleNotFoundError as e:
        if e.name != "training.dequant":
            raise
        raise EvalError(
            "--dequant variational: training/dequant.py (the variational dequantiser) is not available in this "
            f"checkout. Train one with `python -m training dequant --workdir {workdir}` once it exists, or use "
            "--dequant uniform."
        ) from None
    try:
        loaded = deq_mod.load_dequantizer(workdir, with_config=True)
    except (ValueError, OSError) as e:  # a damaged save: the message names the file and the fix
        raise EvalError(f"--dequant variational: {e}") from e
    if loaded is None:
        raise EvalError(
            f"--dequant variational: no trained dequantiser in {workdir}. Train one with "
            f"`python -m training dequant --workdir {workdir}`, or use --dequant uniform."
        )
    deq, cfg = loaded
    return deq, deq_mod.dequantize_variational, cfg.get("score_step")


def _fingerprint(tree) -> str:
    """8 hex digits identifying the arrays of a pytree (a dequantiser: the per-batch file names; a score
    model: their headers): :func:`training.data.array_fingerprint` of its array leaves."""
    import equinox as eqx
    import jax

    from training.data import array_fingerprint

    return array_fingerprint(*jax.tree.leaves(eqx.filter(tree, eqx.is_array)))[:8]


# --- per-batch files --------------------------------------------------------------------------------


class BatchFile:
    """Append-only JSON-lines file of per-batch results; each record is flushed and fsynced.

    The first line is a header of the settings the batches depend on (model fingerprint, metric, seed,
    and the metric's own options: the ODE's tolerance, the bound's draws, ...). A line cut short by a kill
    is dropped when the file is opened again; any other damaged line raises. Opening an existing file whose
    header differs from the current one in a setting the current one names, other than which examples are
    evaluated (``REUSABLE_ACROSS``), raises :class:`EvalError` naming the differing settings: its batches
    belong to another computation (e.g. a run retrained in the same directory, whose checkpoint has the
    same step). A setting recorded there that the current header does not name is ignored.
    :meth:`records` returns the records by batch (the last wins); the caller reuses one only when its rows
    and its ``data_sha`` (``training.data.array_fingerprint`` of its examples) match."""

    REUSABLE_ACROSS = ("n_examples", "n_batches", "data")

    def __init__(self, path: str, header: dict):
        self.path = path
        self.fix = f"delete {path} to recompute its batches."
        os.makedirs(os.path.dirname(path), exist_ok=True)
        drop_partial_last_line(path)
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            self._stored: list[dict] = []
            self._append({"header": header})
            fsync_dir(os.path.dirname(path))
            return
        # read once: the caller holds the evaluation's directory lock, so only this object appends from now on
        self._stored = stored = self._read()
        old = stored[0].get("header") if stored else None
        if not isinstance(old, dict):
            raise EvalError(f"{path}: its first line is not the header of a batch file; {self.fix}")
        # the settings the batches depend on now (a setting recorded there that no longer matters is ignored)
        keys = sorted(set(header) - set(self.REUSABLE_ACROSS))
        differ = [k for k in keys if old.get(k) != header.get(k)]
        if differ:
            what = "; ".join(f"{k}: {old.get(k, '(absent)')!r} there, {header.get(k, '(absent)')!r} now" for k in differ)
            raise EvalError(
                f"{path} holds batches computed with other settings ({what}). If the checkpoint was retrained "
                f"under the same step, or the file was written by another version of this evaluation, "
                f"{self.fix}"
            )

    def _read(self) -> list[dict]:
        from training.fileio import read_json_lines

        try:
            return read_json_lines(self.path, fix=self.fix)
        except ValueError as e:  # a damaged line (not a cut-off last one): the CLI reports it and exits 2
            raise EvalError(str(e)) from e

    def records(self) -> dict[int, dict]:
        return {int(rec["batch"]): rec for rec in self._stored if "batch" in rec}

    def _append(self, rec: dict) -> None:
        line = json.dumps(rec, allow_nan=True) + "\n"
        with open(self.path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._stored.append(json.loads(line))  # as a reread would give it (JSON types)

    def append(self, rec: dict) -> None:
        self._append(rec)


# --- the per-batch computations ----------------------------------------------------------------------


_EPS_CLASS = None


def _eps_fn(model):
    """ε̂(x, t) for ONE example, as numerics.vdm expects (one class per process, so jitted
    functions are not recompiled for every evaluation)."""
    global _EPS_CLASS
    if _EPS_CLASS is None:
        import equinox as eqx

        class _Eps(eqx.Module):
            model: Any

            def __call__(self, x, t):
                return self.model.eps(x, t)

        _EPS_CLASS = _Eps
    return _EPS_CLASS(model)


def _vlb_draw_fns():
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from numerics.losses import dsm_loss_terms
    from numerics.vdm import (discrete_reconstruction_loss, encode_discrete, gaussian_reconstruction_loss,
                              prior_loss, vdm_loss)

    @eqx.filter_jit
    def uniform_t(eps_model, sde, x, key, stratum, n_strata, data):
        """numerics.vdm.vdm_loss as VDM's code evaluates it: t ~ U[t_min, T], antithetic over the batch."""
        del stratum, n_strata
        loss = vdm_loss(eps_model, sde, x, key, data=data, antithetic=True)
        return loss.prior, loss.reconstruction, loss.diffusion

    @eqx.filter_jit
    def importance_t(eps_model, sde, x, key, stratum, n_strata, data):
        """The same −VLB terms (numerics.vdm.prior_loss, the discrete or Gaussian reconstruction loss) with
        L_∞ = ½∫γ'(t)‖ε − ε̂‖²dt estimated at t ~ p(t) ∝ g²/σ² = γ'(t) (THEORY.md §2.6, §4.7:
        numerics.losses.dsm_loss_terms "g2_is"), stratified over the draws of each example."""
        f = encode_discrete(x, 256, jnp.float64) if data == "discrete" else x
        k_t, k_e, k_0 = jax.random.split(key, 3)
        u = (stratum + jax.random.uniform(k_t, (x.shape[0],), dtype=f.dtype)) / n_strata
        t = sde.importance_inverse_cdf(u, sde.t_min).astype(f.dtype)
        eps = jax.random.normal(k_e, f.shape, f.dtype)
        eps0 = jax.random.normal(k_0, f.shape, f.dtype)
        diff = dsm_loss_terms(eps_model, sde, f, t, eps, "g2_is", parameterisation="eps", t_min=sde.t_min)
        prior = prior_loss(sde, f)
        if data == "discrete":
            recon = discrete_reconstruction_loss(sde, x, eps0)
        else:
            recon = gaussian_reconstruction_loss(sde, f, eps0)
        return prior, recon, diff

    return {"uniform": uniform_t, "is": importance_t}


_VLB_DRAW: dict = {}


def _vlb_draw(kind, *args):
    if not _VLB_DRAW:
        _VLB_DRAW.update(_vlb_draw_fns())
    return _VLB_DRAW[kind](*args)


def vlb_data_mode(cfg, kind: str, vlb_data: str = "auto") -> str:
    """The data the ``vlb`` metric is evaluated on: ``"continuous"`` for continuous test data; for
    8-bit images ``"discrete"`` (VDM's discrete decoder on the pixels, Kingma et al. 2021 App. C) or
    ``"dequantized"`` (the Gaussian decoder on the dequantised data of ``ode`` and ``bound``).
    ``vlb_data="auto"`` takes the one the model was trained on (``training.objectives.uses_discrete_data``:
    discrete only for VDM training with ``loss.vdm_data`` discrete, or auto on images)."""
    if vlb_data not in VLB_DATA:
        raise EvalError(f"--vlb-data must be one of {', '.join(VLB_DATA)}; got {vlb_data!r}.")
    if kind == "continuous":
        if vlb_data != "auto":
            raise EvalError(f"--vlb-data {vlb_data} applies to 8-bit image data; this test set is continuous: "
                            "drop --vlb-data.")
        return "continuous"
    if vlb_data != "auto":
        return vlb_data
    from training.objectives import uses_discrete_data

    return "discrete" if uses_discrete_data(cfg) else "dequantized"


class _Evaluator:
    """Computes one metric on one (padded, sharded) batch; all randomness from the batch key."""

    def __init__(self, model, sde, test: TestSet, opts: _Options, mesh, deq=None, deq_fn=None,
                 vlb_mode: str = "continuous"):
        import jax
        import equinox as eqx

        from training import sharding as shd

        self.mesh = mesh
        self.rep = shd.replicated(mesh)
        self.batch_sh = shd.batch_sharding(mesh)
        params, static = eqx.partition((model, sde), eqx.is_array)
        model, sde = eqx.combine(jax.device_put(params, self.rep), static)
        self.model, self.sde = model, sde
        self.eps_model = _eps_fn(model)
        self.test, self.opts = test, opts
        self.deq, self.deq_fn = deq, deq_fn
        self.base_key = jax.random.key(int(opts.seed))
        self.dims = test.dims
        self.divergence = opts.divergence
        self.vlb_mode = vlb_mode  # "discrete" | "dequantized" (images) | "continuous" (vlb_data_mode)
        if self.divergence == "auto":
            self.divergence = "exact" if self.dims <= EXACT_MAX_DIM else "hutchinson"

    # data of batch b ---------------------------------------------------------------------------------
    def rows(self, b: int) -> tuple[int, int, np.ndarray]:
        """(start, stop, index of each padded row): the last batch is padded with its last example."""
        B = self.opts.batch_size
        start, stop = b * B, min((b + 1) * B, len(self.test))
        return start, stop, np.minimum(start + np.arange(B), stop - 1)

    def key(self, b: int, purpose: int):
        import jax

        return jax.random.fold_in(jax.random.fold_in(self.base_key, b), purpose)

    def shard(self, a):
        import jax

        return jax.device_put(np.asarray(a), self.batch_sh)

    def continuous_batch(self, b: int):
        """(x float64 sharded (B, *event), log q (B,) or None): the model-space data of batch b."""
        import jax.numpy as jnp

        start, stop, idx = self.rows(b)
        raw = self.test.examples[idx]
        if self.test.kind == "continuous":
            return self.shard(raw.astype(np.float64)), None
        k = self.key(b, _KEY_DEQUANT)
        centered = bool(self.test.info.get("centered", True))
        if self.opts.dequant == "uniform":
            from training.data import dequantize

            x = np.array(dequantize(jnp.asarray(raw), k, centered=centered), np.float64)
            log_q = None
        else:
            xq, lq = self.deq_fn(self.deq, jnp.asarray(raw), k)
            x = np.array(xq, np.float64)
            log_q = np.array(lq, np.float64).reshape(-1)
            if x.shape != raw.shape or log_q.shape != (raw.shape[0],):
                raise RuntimeError(
                    f"training.dequant.dequantize_variational returned shapes {x.shape}, {log_q.shape}; "
                    f"expected {raw.shape} and ({raw.shape[0]},)."
                )
        # rows are already padded with copies of the last example's pixels; give them its u too
        last = stop - start - 1
        x[last + 1 :] = x[last]
        if log_q is not None:
            log_q[last + 1 :] = log_q[last]
        return self.shard(x), log_q

    # metrics ------------------------------------------------------------------------------------------
    def ode(self, b: int) -> dict:
        """−log p^ODE(x) (Song et al. 2021 §4.3) by numerics.likelihood.ode_log_likelihood."""
        from numerics.likelihood import ode_log_likelihood

        x, log_q = self.continuous_batch(b)
        kw = {}
        if self.divergence == "hutchinson":
            kw = dict(divergence="hutchinson", n_probes=self.opts.n_probes, key=self.key(b, _KEY_PROBES))
        res = ode_log_likelihood(self.model, self.sde, x, rtol=self.opts.tol, atol=self.opts.tol, **kw)
        se = np.asarray(res.stderr, np.float64)
        return dict(nats=-np.asarray(res.log_prob, np.float64), se=np.where(np.isfinite(se), se, 0.0),
                    nfe=np.asarray(res.nfe, np.int64), log_q=log_q)

    def bound(self, b: int) -> dict:
        """Song et al. 2021's ε-offset bound by training.evaluate.eps_offset_bound (t ~ p_IS)."""
        from training.evaluate import eps_offset_bound

        x, log_q = self.continuous_batch(b)
        est = eps_offset_bound(self.model, self.sde, x, self.key(b, _KEY_BOUND), n_draws=self.opts.bound_draws,
                               weighting="g2_is")
        return dict(nats=np.asarray(est.values, np.float64), se=np.asarray(est.stderr, np.float64), log_q=log_q)

    def vlb(self, b: int) -> dict:
        """VDM's −VLB (Kingma et al. 2021 Eq. 11, 17) by numerics.vdm.vdm_loss, per-example mean of draws."""
        import jax

        log_q = None
        if self.vlb_mode == "discrete":
            _, _, idx = self.rows(b)
            x, data = self.shard(self.test.examples[idx].astype(np.int32)), "discrete"
        else:  # the same (dequantised) data as ode and bound: paired with them
            (x, log_q), data = self.continuous_batch(b), "continuous"
        k = self.key(b, _KEY_VLB)
        n = self.opts.vlb_draws
        draws = []
        for j in range(n):
            prior, recon, diff = _vlb_draw(self.opts.vlb_t, self.eps_model, self.sde, x, jax.random.fold_in(k, j),
                                           np.float64(j), np.float64(n), data)
            draws.append(np.stack([np.asarray(prior, np.float64), np.asarray(recon, np.float64),
                                   np.asarray(diff, np.float64)]))
        d = np.stack(draws, axis=-1)  # (3 terms, B, draws)
        total = d.sum(axis=0)
        return dict(nats=total.mean(-1), se=total.std(-1, ddof=1) / math.sqrt(n), log_q=log_q,
                    terms={"prior": d[0].mean(-1), "reconstruction": d[1].mean(-1), "diffusion": d[2].mean(-1)})


def _to_list(a) -> list:
    return [float(v) for v in np.asarray(a, np.float64).reshape(-1)]


def _computed_on() -> str:
    """Where this process computes: platform, device kind and JAX version (recorded with every batch: a run
    resumed elsewhere agrees with the first to the solver's tolerance, not bitwise)."""
    import jax

    d = jax.devices()[0]
    return f"{d.platform} ({d.device_kind}), jax {jax.__version__}"


def _record(b: int, start: int, stop: int, out: dict, seconds: float, n_dev: int, data_sha: str,
            computed_on: str) -> dict:
    n = stop - start
    rec: dict = dict(batch=b, start=start, stop=stop, data_sha=data_sha, nats=_to_list(out["nats"][:n]),
                     se=_to_list(out["se"][:n]))
    if out.get("nfe") is not None:
        rec["nfe"] = [int(v) for v in np.asarray(out["nfe"][:n])]
    if out.get("log_q") is not None:
        rec["log_q"] = _to_list(out["log_q"][:n])
    if out.get("terms") is not None:
        rec["terms"] = {k: _to_list(v[:n]) for k, v in out["terms"].items()}
    rec.update(seconds=round(seconds, 4), devices=n_dev, computed_on=computed_on)
    return rec


# --- summary -----------------------------------------------------------------------------------------


def _block(values: Float[np.ndarray, " n"], stderr: Float[np.ndarray, " n"] | None, unit: str) -> dict:
    """mean, SE over examples (std/√n, includes the MC noise), mc_se (the MC part: √Σse²/n), unit."""
    n = values.shape[0]
    se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else (float(stderr[0]) if stderr is not None else 0.0)
    out = dict(mean=float(np.mean(values)), se=se, unit=unit)
    if stderr is not None:
        out["mc_se"] = float(np.sqrt(np.sum(np.square(stderr))) / n)
    return out


def _units(nats: Float[np.ndarray, " n"], se: Float[np.ndarray, " n"] | None, test: TestSet, *,
           image_bpd: str | None) -> dict:
    """nats, and nats/dim (continuous data) or bits/dim (images). ``image_bpd``: "dequantized" (the
    NLL of the dequantised, [-1,1]-centred data: offset 8 − log₂ 2) or "discrete" (already a bound on
    −log P(k): nats/(D ln 2))."""
    from numerics.likelihood import bits_per_dim

    D = test.dims
    out = {"nats": _block(nats, se, "nats")}
    per_dim_se = None if se is None else se / D
    if test.kind == "continuous":
        out["nats_per_dim"] = _block(nats / D, per_dim_se, "nats/dim")
    elif image_bpd == "dequantized":
        scale = 2.0 if test.info.get("centered", True) else 1.0
        bpd = np.asarray(bits_per_dim(-nats, D, data_scale=scale), np.float64)
        out["bits_per_dim"] = _block(bpd, None if se is None else se / (D * math.log(2.0)), "bits/dim")
    else:
        out["bits_per_dim"] = _block(nats / (D * math.log(2.0)), None if se is None else se / (D * math.log(2.0)),
                                     "bits/dim")
    return out


def _paired(a: Float[np.ndarray, " n"], b: Float[np.ndarray, " n"], unit: str) -> dict:
    return _block(a - b, None, unit)


def _collect(records: dict[int, dict], n_batches: int, key: str, sub: str | None = None) -> Float[np.ndarray, " n"]:
    parts = []
    for b in range(n_batches):
        r = records[b]
        v = r[key] if sub is None else r[key][sub]
        parts.append(np.asarray(v, np.float64))
    return np.concatenate(parts)


def summary_path(workdir: str, step: int, dequant_label: str, ema: bool = True, variant: str = "") -> str:
    """The default summary JSON: ``workdir/eval_step<step>_<dequant>[_raw][_<variant>].json``
    (``variant``: :func:`summary_variant`)."""
    return os.path.join(workdir, f"eval_step{step}_{dequant_label}{'' if ema else '_raw'}"
                                 f"{'_' + variant if variant else ''}.json")


def summary_variant(opts: _Options, kind: str) -> str:
    """What sets an evaluation's summary apart from the default one, for its default file name, so that
    evaluating other examples or other metrics (a quick ``--limit 100``, ``--split train``, ``--metrics
    ode``) does not overwrite the summary of the full default evaluation: the split when not ``test``
    (images), ``n<N>`` and ``ds<seed>`` when not the default mixture test set, ``limit<N>``,
    ``seed<S>`` when not 0, the metrics when not all of them, and ``vlb-<mode>`` for a ``--vlb-data`` other
    than auto, which changes what the VLB is ('' for the defaults). Estimator
    settings (``--tol``, draws, probes, batch size) estimate the same numbers: a rerun with other settings
    replaces the summary (each set of settings keeps its own batch files)."""
    parts = []
    if kind == "image" and opts.split != "test":
        parts.append(opts.split)
    if kind == "continuous":
        if opts.num_examples != DEFAULT_NUM_EXAMPLES:
            parts.append(f"n{opts.num_examples}")
        if opts.data_seed != 0:
            parts.append(f"ds{opts.data_seed}")
    if opts.limit is not None:
        parts.append(f"limit{opts.limit}")
    if opts.seed != 0:
        parts.append(f"seed{opts.seed}")
    if set(opts.metrics) != set(METRICS):
        parts.append("+".join(m for m in METRICS if m in opts.metrics))
    if opts.vlb_data != "auto" and "vlb" in opts.metrics:  # another quantity: the discrete or Gaussian decoder
        parts.append(f"vlb-{opts.vlb_data}")
    return "_".join(parts)


def format_table(summary: dict) -> str:
    """The short on-screen table of a summary."""
    res = summary["results"]
    d = summary["data"]
    primary = "bits_per_dim" if d["kind"] == "image" else "nats"
    lines = [
        f"eval of {summary['workdir']} at step {summary['checkpoint_step']} ({summary['parameters']} parameters): "
        f"{d['name']}, {d['n']} examples, D = {d['dims']}, {summary['options']['devices']} device(s)",
        f"{'metric':<18}{'mean ± SE':>26}  {'unit':<9}{'NFE':>7}  dequantisation",
    ]

    def row(name, blk, nfe="", deq=""):
        return f"{name:<18}{blk['mean']:>13.4f} ± {blk['se']:<10.4f}  {blk['unit']:<9}{nfe:>7}  {deq}"

    for m in METRICS:
        if m not in res:
            continue
        r = res[m]
        nfe = f"{r['nfe']['mean']:.0f}" if "nfe" in r else ""
        lines.append(row(m, r[primary], nfe, r["dequantization"]))
        if d["kind"] == "continuous":
            lines.append(row("", r["nats_per_dim"]))
        for t, tr in r.get("terms", {}).items():
            lines.append(row(f"  {t}", tr[primary]))
        if r.get("terms") and r.get("data") == "dequantized":
            lines.append("  (terms in nats/(D ln 2): they sum to the total without its dequantisation offset)")
        if "excess_over_true" in r:
            lines.append(row("  − true NLL", r["excess_over_true"]))
    if "true_nll" in res:
        lines.append(row("true −log q(x)", res["true_nll"]["nats"], "", "exact (data mixture)"))
    for name, g in res.get("gaps", {}).items():
        lines.append(row(name, g))
    return "\n".join(lines)


# --- the evaluation ------------------------------------------------------------------------------------


def evaluate_workdir(
    workdir: str | os.PathLike,
    *,
    step: int | None = None,
    ema: bool = True,
    metrics: str | tuple[str, ...] | None = None,
    batch_size: int = 128,
    n_probes: int = 4,
    divergence: str = "auto",
    tol: float = 1e-5,
    bound_draws: int = 16,
    vlb_draws: int = 16,
    vlb_t: str = "is",
    vlb_data: str = "auto",
    dequant: str = "uniform",
    seed: int = 0,
    limit: int | None = None,
    num_examples: int = DEFAULT_NUM_EXAMPLES,
    data_seed: int = 0,
    data_dir: str | None = None,
    split: str = "test",
    out: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluate the checkpoint ``step`` of a training work directory (see the module docstring) and
    write the summary JSON; returns the summary dict. Raises :class:`EvalError` on bad input, and
    :class:`training.fileio.DirectoryBusyError` while another evaluation with the same options (the
    same ``DIR/eval/<tag>/``, whose ``.lock`` it holds) runs."""
    workdir = os.path.abspath(os.fspath(workdir))
    cfg_dict, step = _check_workdir(workdir, step)
    opts = _Options(
        metrics=_parse_metrics(metrics), batch_size=batch_size, n_probes=n_probes, divergence=divergence, tol=tol,
        bound_draws=bound_draws, vlb_draws=vlb_draws, vlb_t=vlb_t, vlb_data=vlb_data, dequant=dequant, seed=seed, limit=limit,
        num_examples=num_examples, data_seed=data_seed, data_dir=data_dir, split=split,
    )
    _positive("--batch-size", opts.batch_size)
    _positive("--n-probes", opts.n_probes)
    _positive("--bound-draws", opts.bound_draws, 2)
    _positive("--vlb-draws", opts.vlb_draws, 2)
    _positive("--num-examples", opts.num_examples)
    if opts.limit is not None:
        _positive("--limit", opts.limit)
    if opts.divergence not in ("auto", "exact", "hutchinson"):
        raise EvalError(f"--divergence must be auto, exact or hutchinson; got {opts.divergence!r}.")
    if opts.vlb_t not in ("is", "uniform"):
        raise EvalError(f"--vlb-t must be is or uniform; got {opts.vlb_t!r}.")
    if opts.dequant not in ("uniform", "variational"):
        raise EvalError(f"--dequant must be uniform or variational; got {opts.dequant!r}.")
    if not (isinstance(opts.tol, (int, float)) and math.isfinite(opts.tol) and opts.tol > 0):
        raise EvalError(f"--tol must be a positive number (rtol = atol of the ODE solver); got {opts.tol!r}.")
    if cfg_dict.get("data", {}).get("name") == "mixture" and opts.dequant == "variational":
        raise EvalError("--dequant variational applies to 8-bit image data; this work directory's data is a mixture "
                        "(continuous): drop --dequant.")

    import jax

    from training import sharding as shd
    from training.evaluate import config_from_dict

    if jax.process_count() > 1:
        raise EvalError("eval runs on one host (all its local devices); start it on a single process.")
    mesh = shd.make_mesh()
    n_dev = int(mesh.devices.size)
    if opts.batch_size % n_dev:
        good = max(n_dev, (opts.batch_size // n_dev) * n_dev)
        raise EvalError(
            f"--batch-size {opts.batch_size} is not divisible by the {n_dev} devices of jax.devices(); "
            f"pass a multiple of {n_dev} (e.g. --batch-size {good})."
        )
    try:
        cfg = config_from_dict(cfg_dict, source=os.path.join(workdir, "config.json"))
    except ValueError as e:
        raise EvalError(str(e)) from e
    test = load_test_set(cfg, limit=opts.limit, num_examples=opts.num_examples, data_seed=opts.data_seed,
                         data_dir=opts.data_dir, split=opts.split)
    if len(test) == 0:
        raise EvalError("the test set is empty (check --limit / --num-examples).")
    vlb_mode = vlb_data_mode(cfg, test.kind, opts.vlb_data)
    deq = deq_fn = deq_step = None
    deq_label = "continuous" if test.kind == "continuous" else opts.dequant
    uses_deq = {"ode", "bound"} | ({"vlb"} if vlb_mode == "dequantized" else set())
    if test.kind == "image" and opts.dequant == "variational" and (uses_deq & set(opts.metrics)):
        deq, deq_fn, deq_step = _load_dequantizer(workdir)
        deq_label = f"variational-{_fingerprint(deq)}"

    t_start = time.time()
    model, cfg, sde, step = _load_model(workdir, step, ema, cfg_dict, opts.data_dir)
    if deq is not None and deq_step != step:
        fitted = "to an unrecorded score checkpoint" if deq_step is None else f"to score checkpoint {deq_step}"
        log(f"note: the variational dequantiser was fitted {fitted}, not to step {step} "
            "evaluated here: the bound holds for any q(u|x), but may be looser than with a dequantiser fitted to "
            f"this step (move {os.path.join(workdir, 'dequantizer')} away and run python -m training dequant "
            f"--step {step}).")
    ev = _Evaluator(model, sde, test, opts, mesh, deq, deq_fn, vlb_mode)

    N, B = len(test), opts.batch_size
    n_batches = -(-N // B)
    tag = f"step{step}-{'ema' if ema else 'raw'}-seed{opts.seed}-bs{B}-{test.tag}"
    eval_dir = os.path.join(workdir, "eval", tag)
    deq_of = {"ode": deq_label, "bound": deq_label,
              "vlb": "none (discrete decoder on the 8-bit pixels)" if vlb_mode == "discrete" else deq_label}
    file_names = {
        # the adaptive steps of a shared-step solve depend on how the batch is split over devices
        # (up to ~4e-3 nats at tol 1e-5), so a resume on another device count starts a new file
        "ode": (f"ode-{deq_label}-{ev.divergence}{opts.n_probes if ev.divergence == 'hutchinson' else ''}"
                f"-tol{opts.tol:g}-dev{n_dev}.jsonl"),
        "bound": f"bound-{deq_label}-g2_is-draws{opts.bound_draws}.jsonl",
        "vlb": (f"vlb-{'discrete' if vlb_mode == 'discrete' else 'gaussian'}"
                f"{'-' + deq_label if vlb_mode == 'dequantized' else ''}-t{opts.vlb_t}-draws{opts.vlb_draws}.jsonl"),
    }
    compute = {"ode": ev.ode, "bound": ev.bound, "vlb": ev.vlb}
    # the options each metric's numbers depend on (in its file's header); the others may change freely
    metric_settings = {
        "ode": dict(tol=opts.tol, divergence=ev.divergence,
                    **({"n_probes": opts.n_probes} if ev.divergence == "hutchinson" else {})),
        "bound": dict(bound_draws=opts.bound_draws),
        "vlb": dict(vlb_draws=opts.vlb_draws, vlb_t=opts.vlb_t),
    }
    from training.data import array_fingerprint

    model_sha = _fingerprint(model)
    data_sha = [array_fingerprint(test.examples[slice(*ev.rows(b)[:2])]) for b in range(n_batches)]

    from tqdm.auto import tqdm

    # one evaluation per set of options at a time: two would append the same batches to one file
    os.makedirs(eval_dir, exist_ok=True)
    with lock_directory(eval_dir, LOCK_NAME, what="evaluation (python -m training eval)",
                        fix="wait for it to end (finished batches are kept, and a rerun with the same options "
                            "reuses them), or evaluate with other options (--seed, --batch-size)."):
        all_records: dict[str, dict[int, dict]] = {}
        computed_on = _computed_on()
        for m in opts.metrics:
            path = os.path.join(eval_dir, file_names[m])
            header = dict(metric=m, checkpoint_step=step, model=model_sha, ema=ema, seed=opts.seed, batch_size=B,
                          data=test.info, n_examples=N, n_batches=n_batches, dequantization=deq_of[m],
                          **metric_settings[m], schema=SCHEMA)
            bf = BatchFile(path, header)
            old = bf.records()
            done = {}
            for b in range(n_batches):
                start, stop, _ = ev.rows(b)
                r = old.get(b)
                if (r is not None and r.get("start") == start and r.get("stop") == stop
                        and len(r.get("nats", ())) == stop - start and r.get("data_sha") == data_sha[b]):
                    done[b] = r
            if done:
                log(f"{m}: {len(done)} of {n_batches} batches already done in {path}; skipping them (resumed).")
            bar = tqdm(total=n_batches, initial=len(done), desc=f"eval {m}", unit="batch", dynamic_ncols=True,
                       file=sys.stderr, disable=not progress)
            for b in range(n_batches):
                if b in done:
                    continue
                t0 = time.perf_counter()
                result = compute[m](b)
                start, stop, _ = ev.rows(b)
                rec = _record(b, start, stop, result, time.perf_counter() - t0, n_dev, data_sha[b], computed_on)
                bf.append(rec)
                done[b] = rec
                bar.update(1)
            bar.close()
            all_records[m] = done

        summary = _summarise(all_records, test, opts, ev, step, ema, workdir, cfg, sde, n_dev, deq_of,
                             {m: os.path.join(eval_dir, file_names[m]) for m in opts.metrics}, n_batches)
        for m, r in summary["results"].items():
            known = [c for c in r.get("computed_on", ()) if c != "unrecorded"]  # files older than the record
            if len(known) > 1:
                log(f"note: {m}'s batches were computed on more than one platform or JAX version "
                    f"({'; '.join(known)}): they agree to rounding and the solver's tolerance, not bitwise; "
                    f"delete {r['batch_file']} to recompute them all here.")
        if deq is not None:
            summary["dequantizer"] = dict(label=deq_label, fitted_to_score_step=deq_step)
        summary["wall_time_s"] = round(time.time() - t_start, 3)
        path = (os.path.abspath(out) if out
                else summary_path(workdir, step, deq_label.split("-")[0], ema, summary_variant(opts, test.kind)))
        summary["summary_path"] = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        write_atomic(path, json.dumps(summary, indent=2, allow_nan=True))
    return summary


def _summarise(records, test: TestSet, opts: _Options, ev: _Evaluator, step, ema, workdir, cfg, sde, n_dev, deq_of,
               files, n_batches) -> dict:
    results: dict[str, Any] = {}
    true_nll = None
    if test.mixture is not None:
        true_nll = -np.asarray(test.mixture.log_prob(np.asarray(test.examples, np.float64)), np.float64)
        results["true_nll"] = dict(
            description="exact −log q(x) of the data mixture at the test points; its mean is a Monte Carlo "
                        "estimate of the entropy H(q) (the lowest achievable expected NLL)",
            **_units(true_nll, None, test, image_bpd=None),
        )
    per_metric_nats = {}
    for m, recs in records.items():
        nats = _collect(recs, n_batches, "nats")
        se = _collect(recs, n_batches, "se")
        has_q = "log_q" in recs[0]
        if has_q:  # E_q[−log p(x) + log q(u|k)] (THEORY.md §2.9, variational dequantisation)
            nats = nats + _collect(recs, n_batches, "log_q")
        per_metric_nats[m] = nats
        r: dict[str, Any] = dict(dequantization=deq_of[m], n=int(nats.shape[0]), batch_file=files[m],
                                 computed_on=sorted({rec.get("computed_on", "unrecorded") for rec in recs.values()}))
        if m == "ode":
            nfe = _collect(recs, n_batches, "nfe")
            r.update(description="−log p^ODE(x), probability-flow ODE (Song et al. 2021 §4.3)",
                     divergence=ev.divergence, n_probes=opts.n_probes if ev.divergence == "hutchinson" else None,
                     rtol=opts.tol, atol=opts.tol, solver="Tsit5 + PID, shared steps (worst per-example error)",
                     nfe=dict(mean=float(nfe.mean()), max=int(nfe.max()), unit="vector-field evaluations"))
            r.update(_units(nats, se, test, image_bpd="dequantized"))
        elif m == "bound":
            r.update(description="Song et al. 2021's ε-offset variational bound (Theorem 2 + Tweedie decoder), "
                                 "t importance-sampled and stratified",
                     weighting="g2_is", n_draws=opts.bound_draws, eps=float(sde.t_min))
            r.update(_units(nats, se, test, image_bpd="dequantized"))
        else:
            discrete = ev.vlb_mode == "discrete"
            r.update(description="VDM −VLB = prior + reconstruction + diffusion L_∞ (Kingma et al. 2021 Eq. 11, 17)",
                     decoder="discrete" if discrete else "gaussian", data=ev.vlb_mode, n_draws=opts.vlb_draws,
                     time_sampling=("importance-sampled p(t) ∝ g²/σ², stratified over the draws" if opts.vlb_t == "is"
                                    else "uniform, antithetic over the batch (numerics.vdm.vdm_loss)"))
            r.update(_units(nats, se, test, image_bpd="discrete" if discrete else "dequantized"))
            # the terms in nats/(D ln 2) each: for dequantised data without the offset 8 − log₂ 2 and the
            # log q of the total, so that the terms always sum to −VLB(x) in the same unit
            r["terms"] = {t: _units(_collect(recs, n_batches, "terms", t), None, test, image_bpd="discrete")
                          for t in ("prior", "reconstruction", "diffusion")}
        if has_q:
            r["mean_log_q_nats"] = float(np.mean(_collect(recs, n_batches, "log_q")))
        if true_nll is not None:
            r["excess_over_true"] = _paired(nats, true_nll, "nats")
        results[m] = r
    gaps = {}
    if "ode" in per_metric_nats and "bound" in per_metric_nats:
        gaps["bound − ode"] = _paired(per_metric_nats["bound"], per_metric_nats["ode"], "nats")
    if "ode" in per_metric_nats and "vlb" in per_metric_nats and ev.vlb_mode != "discrete":
        gaps["vlb − ode"] = _paired(per_metric_nats["vlb"], per_metric_nats["ode"], "nats")
    if gaps:
        results["gaps"] = gaps
    import jax

    data = dict(test.info, kind=test.kind, n=len(test), dims=test.dims, event_shape=list(test.examples.shape[1:]))
    return dict(
        schema=SCHEMA,
        workdir=workdir,
        config_name=cfg.name,
        checkpoint_step=int(step),
        parameters="ema" if ema else "raw",
        objective=getattr(cfg.loss, "objective", "dsm"),
        sde=dict(name=type(sde).__name__, t_min=float(sde.t_min), T=float(sde.T)),
        data=data,
        options=dict(metrics=list(opts.metrics), batch_size=opts.batch_size, n_probes=opts.n_probes,
                     divergence=ev.divergence, tol=opts.tol, bound_draws=opts.bound_draws, vlb_draws=opts.vlb_draws,
                     vlb_t=opts.vlb_t, dequant=opts.dequant if test.kind == "image" else None, seed=opts.seed, limit=opts.limit,
                     devices=n_dev, platform=jax.devices()[0].platform),
        results=results,
    )
