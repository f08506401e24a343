"""Figure 7 — a small-scale counterpart of Song et al. 2021's Table 2 (THEORY.md §2.2, §2.6–2.10).

Left: the 2-D mixture preset trained (shortened) with λ = σ², λ = g² and λ = g² + importance
sampling; for each, the probability-flow ODE NLL and Song et al.'s ε-offset variational bound
(nats, mean ± SE over test points) against the true entropy H(q_0) (Monte Carlo of −log q with SE).
Right: the embedded 8×8 digits trained with the same three weightings (the digits preset with the
residual MLP on the 64 flattened pixels instead of DDPM++, whose CPU cost does not fit the main
job), ODE bits/dim (Hutchinson) and bound, with uniform dequantisation, on digits held out from
training (training.data.load_digits("test"): the presets train on the first 1500 of the 1797).
In reduced mode the runs' EMA rate is lowered (paper_figures._common.reduced_ema) so that the
short runs are not evaluated at their random initialisation.
Everything is computed by training.train and training.evaluate.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from paper_figures._common import Context, FigureOutput, plt, reduced_ema
from training import evaluate as ev
from training.configs import get_config
from training.data import get_mixture, load_digits
from training.train import train

NAME = "table2"
TITLE = "Figure 7: likelihood weighting and importance sampling, small-scale Table 2"
PAPER = "Song et al. 2021, Table 2 (Thm 2 bound with ε-offset, §2.7; ODE NLL, §4.3); THEORY.md §2.2–2.10"
CAPTION = (
    "Score models of the 2-D three-blob mixture trained (shortened mixture2d preset) with λ = σ², λ = g² and "
    "λ = g² with importance-sampled t: probability-flow ODE NLL and Song et al.'s Theorem 2 variational bound with "
    "the ε-truncation offset (THEORY.md §2.7, Eq. 2.1 and the Tweedie decoder), shown as the excess over the true "
    "−log q_0(x) on the same test points (paired, so the spread of −log q cancels); "
    "compare the weightings as in Song et al.'s Table 2. The digits panel trains the same three weightings on the "
    "embedded 8×8 digits (an MLP on the pixels, {digits_steps} CPU steps: far from converged) and reports bits/dim with "
    "uniform dequantisation (THEORY.md §2.9) on {n_digits} held-out digits (not trained on); lower is better, 8 bits/dim is the uniform density. The mixture runs are {mixture_steps} "
    "steps{ema_note}."
)

WEIGHTINGS = (("sigma2", "λ = σ²"), ("g2", "λ = g²"), ("g2_is", "λ = g² + IS"))


def mixture_steps(ctx: Context) -> int:  # the run sizes (figure 8 reads these runs)
    return ctx.size(1500, 150)


def digits_steps(ctx: Context) -> int:
    return ctx.size(2000, 60)


def n_digits(ctx: Context) -> int:
    return ctx.size(200, 8)


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def train_runs(ctx: Context) -> dict:
    """The three mixture2d runs (work directories), trained once per context and cached for figure 8."""
    if "table2_runs" in ctx.cache:
        return ctx.cache["table2_runs"]
    root = Path(tempfile.mkdtemp(prefix="table2_runs_"))
    atexit.register(shutil.rmtree, root, True)  # the runs live for this process (figure 8 reads them)
    steps = mixture_steps(ctx)
    runs = {}
    for w, _ in WEIGHTINGS:
        cfg = get_config("mixture2d", [
            f"loss.weighting={w}", f"train.num_steps={steps}", f"train.ckpt_every={steps // 5}", "train.keep=10",
            f"train.log_every={max(steps // 30, 10)}", "train.progress=false", f"train.seed={ctx.seed}",
        ] + reduced_ema(ctx, steps))
        workdir = _fresh(root / f"mixture2d_{w}")
        train(cfg, workdir)
        runs[w] = workdir
    ctx.cache["table2_runs"] = runs
    return runs


def _mixture_panel(ctx: Context, ax, summary, lines):
    q = get_mixture("three_blobs_2d")
    n_test, n_draws = ctx.size(512, 64), ctx.size(32, 8)
    k_test, k_ent, k_b = jax.random.split(jax.random.key(ctx.seed + 7), 3)
    x = q.sample(k_test, n_test)
    true_nll = -np.asarray(q.log_prob(x))
    ent_x = -np.asarray(q.log_prob(q.sample(k_ent, ctx.size(20000, 2000))))
    H, H_se = ent_x.mean(), ent_x.std(ddof=1) / np.sqrt(ent_x.size)
    runs = train_runs(ctx)
    lines += ["| data | λ | ODE NLL | bound | NLL − (−log q) (paired) | bound − (−log q) (paired) |",
              "|---|---|---|---|---|---|"]
    for i, (w, label) in enumerate(WEIGHTINGS):
        model, cfg, sde, step = ev.load_model(runs[w])
        nll = ev.ode_nll(model, sde, x)
        bound = ev.eps_offset_bound(model, sde, x, jax.random.fold_in(k_b, i), n_draws=n_draws)
        cells = []
        for j, (est, name, hatch) in enumerate(((nll, "ODE NLL", ""), (bound, "bound (Thm 2 + ε-offset)", "//"))):
            excess = est.minus(true_nll)  # paired on the same test points: the spread of −log q cancels
            ex, ex_se = excess.mean, excess.se
            ax.bar(i + (j - 0.5) * 0.38, ex, 0.36, yerr=3 * ex_se, capsize=3, color=f"C{i}", hatch=hatch,
                   edgecolor="k", alpha=0.8, label=name if i == 0 else None)
            cells.append(f"{ex:.4f} ± {ex_se:.4f}")
            summary[f"mixture_{'nll' if j == 0 else 'bound'}_excess_{w}"] = float(ex)
        summary[f"mixture_nll_{w}"] = nll.mean
        summary[f"mixture_bound_{w}"] = bound.mean
        lines.append(f"| mixture2d ({step} steps) | {label} | {nll} | {bound} | {cells[0]} | {cells[1]} |")
    summary["mixture_entropy"] = float(H)
    ax.axhline(0.0, color="k", lw=1)
    ax.set_xticks(range(len(WEIGHTINGS)), [lab for _, lab in WEIGHTINGS])
    ax.set_ylabel("excess over true −log q₀(x) (nats, paired, ± 3 SE)")
    ax.set_title(f"2-D mixture, {mixture_steps(ctx)} steps, {n_test} test points (H(q₀) = {H:.3f} ± {H_se:.3f} nats)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right")  # clear of the tallest (λ = σ²) error bars
    lines.append(f"| mixture2d | true entropy H(q₀) | {H:.4f} ± {H_se:.4f} (MC, {ent_x.size} samples) | | | |")


def _digits_panel(ctx: Context, ax, summary, lines):
    """The three weightings on the embedded 8×8 digits, with the residual MLP on the 64 flattened
    pixels (training.networks.FlatMLPScoreNet): the same objectives and evaluation code as the
    DDPM++ presets, at a CPU-sized cost. Uniform dequantisation, bits/dim of the 8-bit data."""
    steps = digits_steps(ctx)
    images = load_digits("test").images[:n_digits(ctx)]  # held out: the runs train on the "train" split
    key = jax.random.key(ctx.seed + 8)
    root = Path(tempfile.mkdtemp(prefix="table2_digits_"))
    atexit.register(shutil.rmtree, root, True)
    t0 = time.perf_counter()
    lines_d, top, ests = [], 0.0, {}
    for i, (w, label) in enumerate(WEIGHTINGS):
        cfg = get_config("digits", [
            "model.name=mlp", "model.width=256", "model.depth=3", f"loss.weighting={w}", "train.batch_size=128",
            f"train.num_steps={steps}", f"train.ckpt_every={steps}", f"train.log_every={max(steps // 20, 10)}",
            "train.progress=false", f"train.seed={ctx.seed}", "optim.lr=1e-3", "optim.warmup=100", "optim.ema_rate=0.995",
        ] + reduced_ema(ctx, steps))
        workdir = _fresh(root / f"digits_{w}")
        train(cfg, workdir)
        if w == "g2_is":
            ctx.cache["table2_digits"] = workdir
        model, cfg, sde, step = ev.load_model(workdir)
        # the same dequantisation and probes for every model (paired comparison of the weightings)
        nll = ev.image_nll_bpd(model, sde, images, jax.random.fold_in(key, 0), n_probes=2, rtol=1e-4, atol=1e-4)
        bound = ev.image_bound_bpd(model, sde, images, jax.random.fold_in(key, 1), n_draws=ctx.size(8, 2))
        for j, (est, name, hatch) in enumerate(((nll, "ODE NLL (Hutchinson, 2 probes)", ""),
                                                 (bound, "bound (Thm 2 + ε-offset)", "//"))):
            ax.bar(i + (j - 0.5) * 0.38, est.mean, 0.36, yerr=3 * est.se, capsize=3, color=f"C{i}", hatch=hatch,
                   edgecolor="k", alpha=0.8, label=name if i == 0 else None)
            ax.text(i + (j - 0.5) * 0.38, est.mean + 3 * est.se, f"{est.mean:.2f}", ha="center", va="bottom", fontsize=7)
            top = max(top, est.mean + 3 * est.se)
        summary[f"digits_bpd_nll_{w}"] = nll.mean
        summary[f"digits_bpd_bound_{w}"] = bound.mean
        ests[w] = (nll, bound)
        lines_d.append(f"| digits, MLP ({step} steps; {images.shape[0]} held-out digits) | {label} "
                       f"| {nll} | {bound} | | |")
    # Table 2's comparisons, paired on the same digits, dequantisation and probes
    labels = dict(WEIGHTINGS)
    for a, b in (("sigma2", "g2"), ("g2_is", "g2"), ("g2_is", "sigma2")):
        dn, db = (ests[a][j].minus(ests[b][j].values) for j in (0, 1))
        for what, d in (("nll", dn), ("bound", db)):
            summary[f"digits_bpd_{what}_{a}_minus_{b}"], summary[f"digits_bpd_{what}_{a}_minus_{b}_se"] = d.mean, d.se
        lines_d.append(f"| digits, paired difference | {labels[a]} − ({labels[b]}) | {dn} | {db} | | |")
    summary["digits_train_eval_s"] = time.perf_counter() - t0
    lines += lines_d
    ax.axhline(8.0, color="k", ls=":", lw=1, label="uniform density on [−1, 1]^D: 8 bits/dim")
    ax.set_xticks(range(len(WEIGHTINGS)), [lab for _, lab in WEIGHTINGS])
    ax.set_ylabel(f"bits/dim on {images.shape[0]} held-out digits (mean ± 3 SE)")
    ax.set_title(f"8×8 digits, MLP on pixels, {steps} steps\n(evaluated on held-out digits)",
                 fontsize=10)
    ax.set_ylim(0, max(12.5, 1.35 * top))  # room for the bar labels and the legend
    ax.legend(fontsize=7, loc="upper center")


def make(ctx: Context) -> FigureOutput:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.6, 1]})
    summary, lines = {}, []
    _mixture_panel(ctx, ax1, summary, lines)
    _digits_panel(ctx, ax2, summary, lines)
    fig.tight_layout()
    lines += ["", "Bounds: Song et al.'s Theorem 2 over [ε, T] with importance-sampled t, the Tweedie Gaussian decoder "
              "on [0, ε] and the kernel entropy (training.evaluate.eps_offset_bound); NLL: probability-flow ODE, "
              "rtol = atol = 1e-5 (mixture, exact trace) and 1e-4 (digits, Hutchinson with 2 probes). Mixture test "
              "points are fresh draws from the exact mixture; the digits are the first "
              f"{n_digits(ctx)} of the 297 held out from training (training.data.load_digits('test'))."]
    ema = reduced_ema(ctx, mixture_steps(ctx)) + reduced_ema(ctx, digits_steps(ctx))
    ema_note = (f" (reduced run: EMA rate lowered to {' / '.join(e.split('=')[1] for e in ema)} for the mixture / "
                "digits runs, so that the short runs are not evaluated at their initialisation)") if ema else ""
    caption = CAPTION.format(digits_steps=digits_steps(ctx), n_digits=n_digits(ctx), mixture_steps=mixture_steps(ctx),
                             ema_note=ema_note)
    return FigureOutput(files=ctx.save(fig, "fig7_table2"), summary=summary, report_lines=lines, caption=caption)
