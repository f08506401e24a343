"""Draw samples from a trained score model and write them as an image grid (or a scatter plot).

    python -m training sample --workdir DIR [--sampler em|pc|ode] [--steps N] [--num N] ...

Samplers (Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole 2021, "Score-Based Generative Modeling
through Stochastic Differential Equations", ICLR'21 — "the SDE paper"; the reverse-SDE and
probability-flow models of THEORY.md §2.1, linear SDEs of §1), all from the
SDE prior π at T down to t_min, with the model's score s_θ = −ε̂_θ/σ_t (training.evaluate.EpsModel):

* ``em``  — Euler–Maruyama for the reverse-time SDE (Eq. 6), dx = [f(t)x − g(t)² s_θ(x,t)] dt + g(t) dw̄,
  on ``--steps`` uniform steps (numerics.sampling.euler_maruyama_sample).
* ``pc``  — predictor–corrector (Alg. 1–2): reverse-diffusion predictor and ``--n-corrector`` Langevin
  corrector steps of signal-to-noise ratio ``--snr`` per grid time (numerics.sampling.predictor_corrector_sample).
* ``ode`` — the probability-flow ODE (Eq. 13), dx/dt = f(t)x − ½g(t)² s_θ(x,t), by adaptive Tsit5 at
  rtol = atol = ``--tol`` (numerics.sampling.ode_sample); the number of score evaluations (NFE) is printed.

With ``--denoise`` (default) the last step is Tweedie's x̂₀ = (x + σ²_{t_min} s_θ(x, t_min))/α_{t_min}
(THEORY.md §2.7's decoder mean). Samples are deterministic given ``--seed``: batches hold
B = min(--batch-size, --num) samples, batch b uses the key fold_in(PRNGKey(seed), b), and the last
batch is drawn at full size and cut, so sample i depends only on (seed, B, i): with B fixed, a
larger --num extends the same sequence.

Output (default ``DIR/samples/step<step>_<sampler>.png``, with an ``.npz`` beside it):

* images (digits, cifar10): a PNG grid of the samples quantised to 8 bits by
  k = clip(⌊256·y⌋, 0, 255) with y = (x + 1)/2 — the bin of the training data's dequantisation
  y = (k + u)/256, u ~ U[0, 1) (THEORY.md §2.9; equal to round(256y − ½) except on bin edges — not
  the ((x+1)/2·255).round of some public code); npz ``samples``:
  uint8 (N, C, H, W).
* vectors (mixture): a scatter plot of the samples over samples of the true mixture (2-D; 1-D: a
  histogram over the exact density; D > 2: the first two coordinates); npz ``samples``: float (N, D).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float, UInt8

__all__ = [
    "SAMPLERS",
    "SampleResult",
    "draw_samples",
    "quantise",
    "image_grid",
    "save_grid",
    "save_scatter",
    "add_arguments",
    "run",
]

SAMPLERS = ("em", "pc", "ode")
IMAGE_DATA = ("digits", "cifar10")


class UsageError(ValueError):
    """A bad command-line value; the message names the argument and how to fix it."""


# --- sampling -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SampleResult:
    """``samples`` (N, *event) as float numpy; ``nfe`` (N,) score evaluations per sample for the ODE
    sampler (None for em/pc, whose NFE is fixed: steps·(1 + n_corrector) + denoise); ``seconds``
    wall time of the whole draw, compilation included."""

    samples: np.ndarray
    nfe: np.ndarray | None
    seconds: float


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UsageError(f"{name} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def draw_samples(
    model: Callable,
    sde,
    event_shape: tuple[int, ...],
    *,
    sampler: str = "pc",
    num: int = 64,
    batch_size: int = 256,
    seed: int = 0,
    steps: int = 1000,
    n_corrector: int = 1,
    snr: float = 0.16,
    tol: float = 1e-5,
    denoise: bool = True,
    dtype=jnp.float64,
    progress: bool = False,
) -> SampleResult:
    """Draw ``num`` samples of the model ``model(x, t)`` (a score for ONE example, e.g.
    :class:`training.evaluate.EpsModel` or an exact ``GaussianMixture.score_fn``) under ``sde``.

    ``sampler``: "em" (reverse SDE, SDE paper Eq. 6), "pc" (Alg. 1–2) or "ode" (probability flow,
    Eq. 13). Batches of ``min(batch_size, num)``; batch b starts from ``sde.prior_sample`` and samples
    with keys from fold_in(PRNGKey(seed), b); the last batch is drawn at full size and cut, so the
    result does not depend on ``num`` beyond its length (same seed and batch size).
    Raises :class:`UsageError` for bad settings and numerics.likelihood.SolverError when an ODE solve fails
    or an em/pc chain ends with non-finite samples.
    """
    from numerics.sampling import euler_maruyama_sample, ode_sample, predictor_corrector_sample

    if sampler not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {sampler!r}.")
    num = _check_int("--num", num, 1)
    batch_size = _check_int("--batch-size", batch_size, 1)
    steps = _check_int("--steps", steps, 1)
    n_corrector = _check_int("--n-corrector", n_corrector, 0)
    if not (isinstance(snr, (int, float)) and snr > 0 and math.isfinite(snr)):
        raise UsageError(f"--snr must be a positive number; got {snr!r}.")
    if not (isinstance(tol, (int, float)) and tol > 0 and math.isfinite(tol)):
        raise UsageError(f"--tol must be a positive number (rtol = atol of the ODE solver); got {tol!r}.")

    bs = min(batch_size, num)
    n_batches = -(-num // bs)
    base = jax.random.PRNGKey(int(seed))
    out, nfes = [], []
    t0 = time.perf_counter()
    batches = range(n_batches)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"sampling ({sampler})", unit="batch", file=sys.stderr, dynamic_ncols=True)
    for b in batches:
        k_prior, k_run = jax.random.split(jax.random.fold_in(base, b))
        x_T = sde.prior_sample(k_prior, (bs, *event_shape), dtype=dtype)
        if sampler == "em":
            x = euler_maruyama_sample(model, sde, x_T, k_run, n_steps=steps, denoise=denoise)
        elif sampler == "pc":
            x = predictor_corrector_sample(model, sde, x_T, k_run, n_steps=steps, n_corrector=n_corrector,
                                           snr=float(snr), denoise=denoise)
        else:
            res = ode_sample(model, sde, x_T, rtol=float(tol), atol=float(tol), denoise=denoise)
            x = res.samples
            nfes.append(np.asarray(res.nfe) + (1 if denoise else 0))
        out.append(np.asarray(x))
    samples = np.concatenate(out)[:num]
    nfe = np.concatenate(nfes)[:num] if nfes else None
    return SampleResult(samples=samples, nfe=nfe, seconds=time.perf_counter() - t0)


# --- images ---------------------------------------------------------------------------------------


def quantise(x: Float[np.ndarray, "N *event"], centered: bool = True) -> UInt8[np.ndarray, "N *event"]:
    """Samples x (centred: x ∈ [−1, 1]) to 8 bits: y = (x + 1)/2 (or y = x if not centred) and
    k = clip(⌊256·y⌋, 0, 255), the bin k of the dequantisation y = (k + u)/256 used in training
    (training.data.dequantize; THEORY.md §2.9). Non-finite values map to 0."""
    x = np.asarray(x, np.float64)
    y = (x + 1.0) / 2.0 if centered else x
    y = np.where(np.isfinite(y), y, 0.0)
    return np.clip(np.floor(256.0 * y), 0, 255).astype(np.uint8)


def image_grid(
    images: UInt8[np.ndarray, "N C H W"], ncol: int | None = None, *, padding: int = 1, pad_value: int = 255
) -> UInt8[np.ndarray, "Hg Wg C"]:
    """Tile uint8 images (N, C, H, W) into one (H', W', C) image, row-major: image i goes to row
    i // ncol, column i % ncol; ``ncol`` defaults to ⌈√N⌉, rows to ⌈N/ncol⌉. ``padding`` pixels of
    ``pad_value`` surround every image (also at the border), so H' = rows·(H + p) + p and
    W' = ncol·(W + p) + p; unused cells stay ``pad_value``."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"image_grid needs uint8 images (N, C, H, W); got dtype {images.dtype}, shape {images.shape}.")
    n, c, h, w = images.shape
    if n < 1:
        raise ValueError("image_grid needs at least one image.")
    ncol = max(1, math.ceil(math.sqrt(n))) if ncol is None else _check_int("ncol", ncol, 1)
    ncol = min(ncol, n)
    nrow = -(-n // ncol)
    p = _check_int("padding", padding, 0)
    grid = np.full((nrow * (h + p) + p, ncol * (w + p) + p, c), pad_value, np.uint8)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = p + r * (h + p), p + col * (w + p)
        grid[top : top + h, left : left + w, :] = images[i].transpose(1, 2, 0)
    return grid


def save_grid(path: str | os.PathLike, images: UInt8[np.ndarray, "N C H W"], ncol: int | None = None, *,
              padding: int = 1, pad_value: int = 255) -> UInt8[np.ndarray, "Hg Wg C"]:
    """Write :func:`image_grid` of ``images`` as a PNG with matplotlib (``imsave``, lossless: one
    channel is written as RGB with three equal channels, so each pixel keeps its 8-bit value) and
    return the grid."""
    from matplotlib import image as mpimg

    grid = image_grid(images, ncol, padding=padding, pad_value=pad_value)
    if grid.shape[-1] == 1:
        mpimg.imsave(os.fspath(path), np.repeat(grid, 3, axis=-1))
    elif grid.shape[-1] == 3:
        mpimg.imsave(os.fspath(path), grid)
    else:
        raise ValueError(f"save_grid writes 1- or 3-channel images; got {grid.shape[-1]} channels.")
    return grid


# --- vectors --------------------------------------------------------------------------------------


def save_scatter(path: str | os.PathLike, samples: Float[np.ndarray, "N D"], mixture, key, *, title: str = "") -> None:
    """A plot of the samples against the true mixture: 2-D (and more: first two coordinates) a
    scatter over as many samples of the mixture; 1-D a histogram over the exact density. The axes
    span the true samples (with a margin); model samples outside are counted in the legend, so a
    few far outliers do not squash the picture."""
    from matplotlib.figure import Figure

    samples = np.asarray(samples, np.float64)
    n, d = samples.shape
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    true = np.asarray(mixture.sample(key, max(n, 1000) if d == 1 else n), np.float64)
    lo, hi = true.min(0), true.max(0)
    lo, hi = lo - 0.25 * (hi - lo), hi + 0.25 * (hi - lo)
    inside = np.all((samples[:, :2] >= lo[:2]) & (samples[:, :2] <= hi[:2]), axis=1)
    outside = f"; {n - int(inside.sum())} outside the axes" if not inside.all() else ""
    if d == 1:
        grid = np.linspace(lo[0], hi[0], 400)
        dens = np.exp(np.asarray(mixture.log_prob(jnp.asarray(grid[:, None]))))
        bins = max(10, min(100, n // 20))
        width = (hi[0] - lo[0]) / bins  # normalised by all n samples: mass outside the axes is missing
        ax.hist(samples[inside, 0], bins=bins, range=(lo[0], hi[0]), weights=np.full(int(inside.sum()), 1 / (n * width)),
                color="C3", alpha=0.6, label=f"{n} model samples{outside}")
        ax.plot(grid, dens, "k-", lw=1.2, label="true density")
        ax.set_xlim(lo[0], hi[0])
        ax.set_xlabel("x")
        ax.set_ylabel("density")
    else:
        ax.scatter(true[:, 0], true[:, 1], s=3, color="0.6", alpha=0.5, label=f"{n} samples of the true mixture")
        ax.scatter(samples[inside, 0], samples[inside, 1], s=3, color="C3", alpha=0.5,
                   label=f"{n} model samples{outside}")
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂" if d == 2 else f"x₂ (first two of {d} coordinates)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)


# --- command line ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``python -m training sample``."""
    p.add_argument("--workdir", required=True, help="training work directory (config.json, checkpoints/)")
    p.add_argument("--sampler", default="pc", choices=SAMPLERS,
                   help="em: reverse SDE (Eq. 6); pc: predictor-corrector (Alg. 1-2); ode: probability flow (Eq. 13). Default pc")
    p.add_argument("--steps", type=int, default=1000, help="time steps of em/pc (default 1000)")
    p.add_argument("--n-corrector", type=int, default=1, help="Langevin corrector steps per time step of pc (default 1)")
    p.add_argument("--snr", type=float, default=0.16, help="signal-to-noise ratio r of the pc corrector (default 0.16)")
    p.add_argument("--tol", type=float, default=1e-5, help="rtol = atol of the ode sampler (default 1e-5)")
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--batch-size", type=int, default=256, help="samples per compiled batch (default 256)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=True,
                   help="use the EMA parameters (default) or the raw ones (--no-ema)")
    p.add_argument("--denoise", action=argparse.BooleanOptionalAction, default=True,
                   help="Tweedie denoising step at t_min (default on)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="dtype of the sampler's state (the network runs in its own dtype); default float64")
    p.add_argument("--out", default=None, help="output PNG (default DIR/samples/step<step>_<sampler>.png); the .npz goes beside it")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="progress bar over batches")


def _load(args):
    """(model, cfg, sde, step) of the work directory, with errors that name the argument."""
    from training import evaluate as ev

    try:  # locate_checkpoint's and config_from_dict's messages name --workdir / --step / the key and the fix
        return ev.load_model(args.workdir, args.step, ema=args.ema)
    except (ev.WorkdirError, ValueError) as e:
        raise UsageError(str(e)) from e


def _validate(args) -> None:
    if args.sampler not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}; got {args.sampler!r}.")
    for name, attr, minimum in (("--num", "num", 1), ("--batch-size", "batch_size", 1), ("--steps", "steps", 1),
                                ("--n-corrector", "n_corrector", 0)):
        _check_int(name, getattr(args, attr), minimum)
    if not args.snr > 0:
        raise UsageError(f"--snr must be a positive number; got {args.snr!r}.")
    if not args.tol > 0:
        raise UsageError(f"--tol must be a positive number (rtol = atol of the ODE solver); got {args.tol!r}.")


def run(args: argparse.Namespace) -> int:
    """``python -m training sample``: 0 on success, 2 on a usage error, 3 when an ODE solve fails or an
    em/pc chain ends with non-finite samples."""
    from numerics.likelihood import SolverError
    from training.data import get_mixture

    try:
        _validate(args)
        model, cfg, sde, step = _load(args)
        data = cfg.data.name
        if data in IMAGE_DATA:
            event = {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}[data]
        elif data == "mixture":
            mixture = get_mixture(cfg.data.mixture)
            event = (int(mixture.dim),)
        else:
            raise UsageError(f"--workdir: data set {data!r} of its config.json is not one this sampler knows "
                             f"({', '.join((*IMAGE_DATA, 'mixture'))}).")
        out = Path(args.out) if args.out else Path(args.workdir) / "samples" / f"step{step}_{args.sampler}.png"
        if out.suffix.lower() != ".png":
            raise UsageError(f"--out {out}: the grid is written as PNG; give a path ending in .png.")
        out.parent.mkdir(parents=True, exist_ok=True)
        res = draw_samples(model, sde, event, sampler=args.sampler, num=args.num, batch_size=args.batch_size,
                           seed=args.seed, steps=args.steps, n_corrector=args.n_corrector, snr=args.snr, tol=args.tol,
                           denoise=args.denoise, dtype=jnp.dtype(args.dtype), progress=args.progress)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SolverError as e:  # an ODE solve failed, or an em/pc chain ended with NaN/inf (a NaN score)
        fix = ("Try a looser --tol, or the em/pc sampler." if args.sampler == "ode" else
               "Try more --steps, or check the checkpoint (a NaN score: evaluate it with python -m training eval).")
        print(f"error: {e} {fix}", file=sys.stderr)
        return 3

    npz = out.with_suffix(".npz")
    meta = dict(sampler=args.sampler, step=step, seed=args.seed, ema=args.ema, denoise=args.denoise,
                steps=args.steps if args.sampler != "ode" else -1, tol=args.tol if args.sampler == "ode" else np.nan,
                batch_size=min(args.batch_size, args.num))
    if res.nfe is not None:
        meta["nfe"] = res.nfe
    what = {"em": "reverse-SDE Euler–Maruyama", "pc": "predictor–corrector", "ode": "probability-flow ODE"}[args.sampler]
    if data in IMAGE_DATA:
        k = quantise(res.samples, centered=cfg.data.centered)
        save_grid(out, k)
        np.savez(npz, samples=k, **meta)
    else:
        n_bad = int(np.sum(~np.isfinite(res.samples).all(axis=1)))
        save_scatter(out, res.samples, mixture, jax.random.fold_in(jax.random.PRNGKey(args.seed), 10**6),
                     title=f"{cfg.name}, step {step}: {args.sampler} samples vs the true mixture")
        np.savez(npz, samples=res.samples, **meta)
        if n_bad:
            print(f"warning: {n_bad} of {args.num} samples are not finite.", file=sys.stderr)
    print(f"{args.num} samples ({what}, checkpoint step {step}, {'EMA' if args.ema else 'raw'} parameters) "
          f"in {res.seconds:.1f} s ({args.num / res.seconds:.1f} samples/s, compilation included)")
    if res.nfe is not None:
        print(f"NFE (score evaluations per sample): mean {res.nfe.mean():.1f}, min {res.nfe.min()}, max {res.nfe.max()}")
    else:
        nfe = args.steps * (1 + (args.n_corrector if args.sampler == "pc" else 0)) + (1 if args.denoise else 0)
        print(f"NFE (score evaluations per sample): {nfe}")
    print(f"wrote {out}")
    print(f"wrote {npz}")
    return 0
