"""Figure 8 — one training run: loss curve, likelihood at the saved checkpoints, and samples.

Reads a training work directory (``--workdir``; else the λ = g² + IS mixture run that figure 7
trained in this session, else a short mixture2d run trained into ``<out>/run``): the training loss
of metrics.jsonl (for λ = g²: an unbiased estimate of J_DSM(θ; g²), Song et al. 2021 Eq. 7; the
caption names the run's objective) with its batch standard error and, for a DSM mixture run, its
exact-score floor (the expected loss of the data mixture's exact score under the same objective,
numerics.losses.dsm_loss, ± SE); the NLL (mixture: probability-flow ODE NLL in nats on fresh points
of the exact mixture, as its paired excess over −log q there; digits: the ε-offset bound in
bits/dim at every checkpoint and the ODE bits/dim at the last, on digits held out from training,
training.data.load_digits("test")) at each saved checkpoint (EMA
parameters); and samples of the last checkpoint by the probability-flow
ODE (mixture: scatter over the true density's contours; images: an 8×8 grid).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from numerics.checks.engine import mc_mean
from numerics.losses import dsm_loss
from numerics.sampling import ode_sample
from paper_figures._common import Context, FigureOutput, plt, reduced_ema
from paper_figures.fig7_table2 import mixture_steps
from training import evaluate as ev
from training.configs import get_config
from training.data import get_mixture, load_digits
from training.metrics import read_metrics
from training.train import train

NAME = "training_run"
TITLE = "Figure 8: a training run — loss, likelihood at checkpoints, samples"
PAPER = "Song et al. 2021, Eq. 7 (likelihood-weighted DSM) and §4.3 (ODE likelihood); THEORY.md §2.2, §2.6, §2.9"
CAPTION = (
    "A training run ({objective}): the per-batch loss (with ±1 SE band){floor_note}, and the probability-flow ODE "
    "NLL of the EMA model (§4.3; exact trace) at the saved checkpoints, on fresh draws of the mixture, as its excess "
    "over −log q_0 on the same points (paired ± 3 SE, so the spread of −log q cancels), which falls toward 0. "
    "Samples of the last checkpoint by the probability-flow ODE are drawn over the true density's contours. The run "
    "is {steps} steps{ema_note}. (For a digits work directory: no floor, as the data's exact score is unknown; an 8×8 "
    "sample grid; and bits/dim by Theorem 2's bound with the ε-offset of THEORY.md §2.7 on held-out digits.)"
)
_OBJECTIVES = {  # (loss.objective, loss.weighting) → what the logged loss estimates
    ("dsm", "g2_is"): "λ = g² with importance-sampled t: the loss is an unbiased estimate of J_DSM(θ; g²) of Song "
                      "et al.'s Eq. 7",
    ("dsm", "g2"): "λ = g², t uniform: the loss is an unbiased estimate of J_DSM(θ; g²) of Song et al.'s Eq. 7",
    ("dsm", "sigma2"): "λ = σ², t uniform: the loss estimates J_DSM(θ; σ²), not a likelihood bound",
}


def _objective(cfg) -> str:
    if cfg.sde.name == "vdm":
        return "VDM's objective with its learned or fixed noise schedule: the loss is its continuous-time −VLB"
    what = _OBJECTIVES.get((cfg.loss.objective, cfg.loss.weighting))
    return what or f"objective {cfg.loss.objective!r}, weighting {cfg.loss.weighting!r}"


def _workdir(ctx: Context) -> Path:
    if ctx.workdir is not None:
        return Path(ctx.workdir)
    runs = ctx.cache.get("table2_runs")
    if runs and "g2_is" in runs:
        return Path(runs["g2_is"])
    steps = mixture_steps(ctx)  # the size of figure 7's runs, whose λ = g² + IS run this one stands in for
    workdir = ctx.out / "run"
    if workdir.exists():
        shutil.rmtree(workdir)
    cfg = get_config("mixture2d", [f"train.num_steps={steps}", f"train.ckpt_every={steps // 5}", "train.keep=10",
                                   f"train.log_every={max(steps // 30, 10)}", "train.progress=false",
                                   f"train.seed={ctx.seed}"] + reduced_ema(ctx, steps))
    train(cfg, workdir)
    return workdir


def _floor_draws(ctx: Context) -> int:
    return ctx.size(400_000, 40_000)


def _loss_floor(ctx: Context, cfg, sde, q, key) -> tuple[float, float] | None:
    """(mean, SE) of the training objective of ``cfg`` at the mixture's exact score: the per-example
    weighted DSM value of training.objectives (numerics.dsm_loss_terms, same weighting, t ~ the same
    time distribution, t_min = the SDE's) averaged over fresh (x_0, t, ε). None for an objective
    other than DSM (its floor is not this number)."""
    if cfg.loss.objective != "dsm" or cfg.sde.name == "vdm":
        return None
    n = _floor_draws(ctx)
    vals = np.asarray(dsm_loss(q.score_fn(sde), sde, q.sample(jax.random.fold_in(key, 0), n), jax.random.fold_in(key, 1),
                               weighting=cfg.loss.weighting, parameterisation="score", t_min=sde.t_min))
    return mc_mean(vals)


def _loss_panel(ax, records, floor=None):
    steps = np.array([r["step"] for r in records])
    loss = np.array([float(r["loss"]) for r in records])
    se = np.array([float(r.get("loss_se", np.nan)) for r in records])
    ax.plot(steps, loss, "C0-", lw=1.2, label="batch loss (weighted DSM)")
    ax.fill_between(steps, loss - se, loss + se, color="C0", alpha=0.25, label="± 1 SE (batch)")
    if "loss_window_mean" in records[0]:
        ax.plot(steps, [float(r["loss_window_mean"]) for r in records], "k--", lw=1, label="mean over log window")
    if floor is not None:
        m, se = floor
        ax.axhline(m, color="C2", lw=1.2, label=f"exact-score floor: {m:.3f} ± {se:.3f} (±3 SE band)")
        ax.axhspan(m - 3 * se, m + 3 * se, color="C2", alpha=0.25)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss = estimate of J_DSM (nats)")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)


def make(ctx: Context) -> FigureOutput:
    workdir = _workdir(ctx)
    records = read_metrics(workdir / "metrics.jsonl")
    steps = ev.checkpoint_steps(workdir)
    _, cfg, sde, _ = ev.load_model(workdir, steps[-1])
    images = cfg.data.name != "mixture"
    key = jax.random.key(ctx.seed + 8)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 4.2))
    floor = None if images else _loss_floor(ctx, cfg, sde, get_mixture(cfg.data.mixture), jax.random.fold_in(key, 2))
    _loss_panel(ax1, records, floor)
    summary = {"workdir_steps": int(steps[-1]), "final_loss": float(records[-1]["loss"])}
    lines = [f"Work directory: `{workdir.name}` ({cfg.name}, λ = {cfg.loss.weighting}); checkpoints {steps}."]
    if floor is not None:
        summary["loss_floor"], summary["loss_floor_se"] = floor
        last = records[-1]
        lines.append(f"Loss floor (the objective at the exact score, {_floor_draws(ctx)} draws of (x_0, t, ε)): "
                     f"{floor[0]:.4f} ± {floor[1]:.4f} nats; last logged batch loss {float(last['loss']):.4f} "
                     f"± {float(last.get('loss_se', np.nan)):.4f}.")
    elif not images:
        lines.append(f"No loss floor drawn: objective {cfg.loss.objective!r} (the floor is computed for DSM only).")
    value = "bound (bits/dim)" if images else "ODE NLL − (−log q) (nats, paired)"
    lines += ["", f"| step | {value} | SE |", "|---|---|---|"]
    vals, ses = [], []
    if images:
        digits = load_digits("test").images[:ctx.size(32, 8)] if cfg.data.name == "digits" else None  # held out
        if digits is None:
            raise ValueError("figure 8 reads mixture and digits work directories only.")
        for s in steps:
            model, *_ = ev.load_model(workdir, s)
            est = ev.image_bound_bpd(model, sde, digits, jax.random.fold_in(key, s), n_draws=ctx.size(8, 2))
            vals.append(est.mean)
            ses.append(est.se)
        nll = ev.image_nll_bpd(model, sde, digits, jax.random.fold_in(key, 10**6), n_probes=1, rtol=1e-3, atol=1e-3)
        ax2.errorbar([steps[-1]], [nll.mean], yerr=[3 * nll.se], fmt="s", color="C3", capsize=3,
                     label=f"ODE bits/dim (last): {nll}")
        ax2.set_ylabel(f"bits/dim on {digits.shape[0]} held-out digits (mean ± 3 SE)")
        lines.insert(1, f"Bits/dim on {digits.shape[0]} digits held out from training (training.data.load_digits('test')).")
        label = "ε-offset bound (bits/dim)"
        summary["final_bpd_nll"] = nll.mean
    else:
        q = get_mixture(cfg.data.mixture)
        x = q.sample(jax.random.fold_in(key, 0), ctx.size(256, 64))
        true = -np.asarray(q.log_prob(x))
        nlls = []
        for s in steps:
            model, *_ = ev.load_model(workdir, s)
            nlls.append(ev.ode_nll(model, sde, x))
            excess = nlls[-1].minus(true)  # paired on the same points: the spread of −log q cancels
            vals.append(excess.mean)
            ses.append(excess.se)
        ax2.axhline(0.0, color="k", ls="--", lw=1, label=f"0: the exact model (−log q on these points: {true.mean():.3f})")
        ax2.set_ylabel(f"ODE NLL − (−log q) on {x.shape[0]} fresh points (nats, paired ± 3 SE)")
        label = "probability-flow ODE NLL (EMA), excess"
        summary["true_nll_test"] = float(true.mean())
        summary["final_nll"] = nlls[-1].mean
    vals, ses = np.array(vals), np.array(ses)
    ax2.errorbar(steps, vals, yerr=3 * ses, fmt="o-", color="C0", capsize=3, label=label)
    ax2.set_xlabel("training step (checkpoint)")
    ax2.set_title("Likelihood at the saved checkpoints")
    ax2.legend(fontsize=8, loc="best")
    summary["final_value"] = float(vals[-1])
    lines += [f"| {s} | {v:.4f} | {e:.4f} |" for s, v, e in zip(steps, vals, ses)]

    # samples of the last checkpoint by the probability-flow ODE
    n = 64 if images else ctx.size(1000, 200)
    event = (1, 8, 8) if images else (q.dim,)
    x_T = sde.prior_sample(jax.random.fold_in(key, 1), (n, *event), dtype=jnp.float64)
    tol = 1e-3 if images else 1e-5
    samples = np.asarray(ode_sample(model, sde, x_T, rtol=tol, atol=tol, denoise=True).samples)
    if images:
        from training.sample import image_grid, quantise

        grid = image_grid(quantise(samples, centered=cfg.data.centered), ncol=8, pad_value=0)  # training.sample's grid; white gaps under gray_r
        ax3.imshow(grid[..., 0], cmap="gray_r", vmin=0, vmax=255)
        ax3.set_xticks([])
        ax3.set_yticks([])
        ax3.set_title("64 ODE samples (last checkpoint)")
    else:
        lo, hi = x.min(0) - 1.0, x.max(0) + 1.0
        g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 120), np.linspace(lo[1], hi[1], 120))
        dens = np.exp(np.asarray(q.log_prob(jnp.stack([g0.ravel(), g1.ravel()], -1)))).reshape(g0.shape)
        ax3.contour(g0, g1, dens, levels=6, colors="k", linewidths=0.8, zorder=3)
        ax3.scatter(samples[:, 0], samples[:, 1], s=3, color="C3", alpha=0.5, label=f"{n} ODE samples")
        ax3.plot([], [], color="k", lw=0.8, label="true density q₀ (contours)")
        ax3.set_xlim(lo[0], hi[0])
        ax3.set_ylim(lo[1], hi[1])
        ax3.set_xlabel("x₁")
        ax3.set_ylabel("x₂")
        ax3.set_title("Samples of the last checkpoint")
        ax3.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    run_steps = int(steps[-1])
    ema_note = (f" (EMA rate {cfg.optim.ema_rate:g}, lowered for the reduced run so that its EMA is not "
                "still the initialisation)") if ctx.reduced and ctx.workdir is None else ""
    floor_note = (", falling toward its exact-score floor (the same objective's expected value at the data mixture's "
                  "exact score, Monte Carlo, drawn with its ±3 SE band)") if floor is not None else ""
    caption = CAPTION.format(objective=_objective(cfg), floor_note=floor_note, steps=run_steps, ema_note=ema_note)
    return FigureOutput(files=ctx.save(fig, "fig8_training_run"), summary=summary, report_lines=lines, caption=caption)
