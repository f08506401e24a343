"""Figure 4 — VDM's continuous-time loss: schedule invariance and the T-step losses (Kingma et al. 2021;
THEORY.md §4.3–4.5).

With the exact denoiser of a 2-D data mixture (``numerics.checks.cases.data_mixture``):

(a) three monotone schedules γ(t) with the same endpoints γ ∈ [−13.3, 5] — linear, cosine and a strongly
    non-linear monotone network (``numerics.vdm.MonotoneGamma`` with fixed endpoints);
(b) E_x L_∞ for each (``numerics.checks.vdm.diffusion_losses``: Gauss–Legendre in t, not in log-SNR, so the
    three use different nodes), equal within SE (VDM Eq. 18), with the identity record of
    ``check_vdm_schedule_invariance`` (paired over common x₀) built from the same per-sample losses;
(c) E_x L_T for T = 1 … 1024 (VDM Eq. 13), decreasing to L_∞;
(d) the paired excess L_T − L_∞ on log–log axes, which falls like 1/T (THEORY.md §4.5).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import numerics
from numerics.checks import engine, vdm
from numerics.checks.cases import data_mixture
from numerics.vdm import MonotoneGamma
from paper_figures._common import Context, FigureOutput, plt

NAME = "vdm"
TITLE = "Figure 4: VDM — schedule invariance of L_∞ and convergence of L_T"
PAPER = "Kingma et al. 2021 (VDM), Eq. 13 (L_T), Eq. 17–18 (L_∞ and its invariance); THEORY.md §4.3–4.5"
CAPTION = (
    "With the exact denoiser of a 2-D mixture, VDM's continuous-time diffusion loss L_∞ (Eq. 17) is the same for a linear, "
    "a cosine and a strongly non-linear learned-form monotone schedule with equal endpoints γ ∈ [−13.3, 5], within Monte-Carlo "
    "error — VDM's Eq. 18: L_∞ depends on the schedule only through SNR_min and SNR_max. The T-step loss L_T (Eq. 13) "
    "decreases monotonically in T towards L_∞, with an excess that falls like 1/T (THEORY.md §4.5)."
)


def _monotone_schedule(seed: int) -> MonotoneGamma:
    """VDM's monotone network form with fixed endpoints, its weights set to make γ visibly non-linear."""
    g = MonotoneGamma(-13.3, 5.0, n_features=8, endpoints="fixed", key=jax.random.key(seed))
    return eqx.tree_at(
        lambda m: (m.l1_weight, m.l2_weight, m.l2_bias, m.l3_weight),
        g,
        (jnp.asarray(2.0), jnp.linspace(3.0, 8.0, 8), jnp.linspace(-4.0, 4.0, 8), jnp.linspace(1.0, 4.0, 8)),
    )


def make(ctx: Context) -> FigureOutput:
    q = data_mixture()
    schedules = {
        "linear": numerics.LogSNRSDE(numerics.LinearGamma()),
        "cosine": numerics.LogSNRSDE(numerics.CosineGamma()),
        "monotone net": numerics.LogSNRSDE(_monotone_schedule(ctx.seed + 4)),
    }
    # One sample size and seed for every call: common x₀ everywhere, and the linear schedule's L_∞ paths
    # (one compilation per schedule and per T) are shared between panels (b) and (c).
    n = ctx.size(2048, 512)
    T_list = tuple(2**k for k in range(11)) if not ctx.reduced else (1, 16, 256)
    seed = ctx.seed + 4

    # (b) L_∞ per schedule, common x₀ (same seed), exact denoisers.
    L_inf = {k: np.asarray(vdm.diffusion_losses(q, s, q.score_fn(s), T_list=(), seed=seed, n_samples=n)["inf"])
             for k, s in schedules.items()}
    # The identity of ``check_vdm_schedule_invariance`` (L_∞(γ_a) = L_∞(γ_b), paired over common x₀), recorded
    # on the per-sample losses above rather than re-run (that would repeat the three L_∞ solves).
    checks = {k: vdm.schedule_invariance(L_inf[k], L_inf["linear"]) for k in schedules if k != "linear"}
    # (c, d) L_T and L_∞ on common x₀ for the linear schedule.
    lin = schedules["linear"]
    L = {k: np.asarray(v) for k, v in vdm.diffusion_losses(q, lin, q.score_fn(lin), T_list=T_list, seed=seed,
                                                             n_samples=n).items()}

    fig, axes = plt.subplots(2, 2, figsize=(11.5, 8.0))
    (ax0, ax1), (ax2, ax3) = axes
    t = np.linspace(0.0, 1.0, 201)
    colors = dict(zip(schedules, ("C0", "C1", "C2")))
    for k, s in schedules.items():
        ax0.plot(t, np.asarray(s.gamma(jnp.asarray(t))), color=colors[k], label=k)
    ax0.set_xlabel("time t")
    ax0.set_ylabel("γ(t) = −log SNR(t)  (nats)")
    ax0.set_title("(a) three schedules with equal endpoints")
    ax0.legend(fontsize=8, loc="upper left")

    means = {k: engine.mc_mean(v) for k, v in L_inf.items()}
    xs = np.arange(len(schedules))
    ax1.bar(xs, [means[k][0] for k in schedules], yerr=[3 * means[k][1] for k in schedules], capsize=6,
            color=[colors[k] for k in schedules], alpha=0.8, edgecolor="k")
    for x, k in zip(xs, schedules):
        m, se = means[k]
        text = f"{m:.3f}\n± {se:.3f}"
        if k != "linear":
            text += f"\nΔ vs linear:\n{L_inf[k].mean() - L_inf['linear'].mean():+.3f} ± {engine.paired(L_inf[k], L_inf['linear'])[2]:.3f}"
        ax1.text(x, 0.5 * m, text, ha="center", va="center", fontsize=8, color="k",
                 bbox=dict(facecolor="white", alpha=0.85, edgecolor="none"))
    ax1.set_xticks(xs, list(schedules))
    ax1.set_ylabel(r"$\mathbb{E}_x L_\infty(x)$  (nats)")
    ax1.set_title("(b) continuous-time loss, exact denoiser (±3 SE)")

    Ts = np.array(T_list, dtype=float)
    lt = np.array([engine.mc_mean(L[T]) for T in T_list])
    li, li_se = engine.mc_mean(L["inf"])
    ax2.errorbar(Ts, lt[:, 0], yerr=3 * lt[:, 1], fmt="o-", color="C0", capsize=3, label=r"$\mathbb{E}_x L_T$ ± 3 SE")
    ax2.axhline(li, color="k", lw=1.2, label=rf"$\mathbb{{E}}_x L_\infty$ = {li:.3f} ± {li_se:.3f}")
    ax2.axhspan(li - 3 * li_se, li + 3 * li_se, color="k", alpha=0.15)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("number of steps T")
    ax2.set_ylabel("diffusion loss (nats, log scale)")
    ax2.set_title("(c) T-step loss L_T → L_∞ (linear schedule)")
    ax2.legend(fontsize=8, loc="upper right")

    gaps = np.array([engine.mc_mean(L[T] - L["inf"]) for T in T_list])
    ax3.errorbar(Ts, gaps[:, 0], yerr=3 * gaps[:, 1], fmt="o-", color="C3", capsize=3,
                 label=r"$\mathbb{E}_x[L_T - L_\infty]$ (paired) ± 3 SE")
    ref = gaps[-1, 0] * Ts[-1] / Ts
    ax3.plot(Ts, ref, "k--", lw=1, label="∝ 1/T (through the last point)")
    ax3.set_xscale("log", base=2)
    ax3.set_yscale("log")
    ax3.set_xlabel("number of steps T")
    ax3.set_ylabel("excess over L_∞ (nats, log scale)")
    ax3.set_title("(d) excess of L_T over L_∞")
    ax3.legend(fontsize=8, loc="upper right")
    fig.tight_layout()

    monotone = bool(np.all(np.diff(lt[:, 0]) < 3 * np.hypot(lt[1:, 1], lt[:-1, 1])))
    summary = {
        "L_inf_linear": means["linear"][0],
        "L_inf_cosine_minus_linear_z": checks["cosine"].z_score(),
        "L_inf_monotone_minus_linear_z": checks["monotone net"].z_score(),
        "L_inf_se": means["linear"][1],
        f"L_{T_list[-1]}_minus_L_inf": float(gaps[-1, 0]),
        "L_T_decreasing": monotone,
    }
    lines = ["| schedule | E L_∞ ± SE (n = %d) | invariance check vs linear (z, holds) |" % n, "|---|---|---|"]
    for k in schedules:
        c = checks.get(k)
        lines.append(f"| {k} | {means[k][0]:.4f} ± {means[k][1]:.4f} | "
                     + ("—" if c is None else f"{c.name}: z = {c.z_score():+.2f}, holds = {c.holds}") + " |")
    lines += ["", "| T | E L_T ± SE | E[L_T − L_∞] ± SE (paired) |", "|---|---|---|"]
    lines += [f"| {T} | {lt[j, 0]:.4f} ± {lt[j, 1]:.4f} | {gaps[j, 0]:.4f} ± {gaps[j, 1]:.4f} |" for j, T in enumerate(T_list)]
    lines += ["", f"L_T on the same {n} data points (independent ε per step), L_∞ = {li:.4f} ± {li_se:.4f} on the same points."]
    return FigureOutput(files=ctx.save(fig, "fig4_vdm"), summary=summary, report_lines=lines)
