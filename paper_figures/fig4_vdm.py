"""Figure 4 — VDM's continuous-time loss: schedule invariance and the T-step losses (Kingma et al. 2021;
THEORY.md §4.3–4.5).

With the exact denoiser of a 2-D data mixture (``numerics.checks.cases.data_mixture``):

(a) three monotone schedules γ(t) with the same endpoints γ ∈ [−13.3, 5] — linear, cosine and a strongly
    non-linear monotone network (``numerics.vdm.MonotoneGamma`` with fixed endpoints);
(b) E_x L_∞ for each (``numerics.checks.vdm.common_path_losses``: Gauss–Legendre in t, not in log-SNR, so the
    three use different nodes, on the same (x₀, ε) paths), equal path by path to quadrature accuracy (VDM
    Eq. 18), with the identity record of ``check_vdm_schedule_invariance`` built from the same per-path losses;
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
    "a cosine and a strongly non-linear learned-form monotone schedule with equal endpoints γ ∈ [−13.3, 5], path by path "
    "(the same data point and noise, largest difference {max_path_difference}) — VDM's Eq. 18: L_∞ depends on the schedule only through SNR_min and SNR_max. The T-step loss L_T (Eq. 13) "
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
    # One sample size and seed for every call: panels (b) and (c, d) each on common x₀.
    n = ctx.size(2048, 512)
    T_list = tuple(2**k for k in range(11)) if not ctx.reduced else (1, 16, 256)
    seed = ctx.seed + 4

    # (b) L_∞ per schedule on the same (x₀, ε) paths, exact denoisers.
    L_inf = {k: np.asarray(v) for k, v in vdm.common_path_losses(q, schedules, seed=seed, n_samples=n)[1].items()}
    # The identity of ``check_vdm_schedule_invariance`` (L_∞(γ_a) = L_∞(γ_b) path by path), recorded on the
    # per-path losses above rather than re-run (that would repeat the three L_∞ solves).
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
            text += f"\nΔ vs linear:\n{checks[k].gap:+.1e}\nmax per path:\n{checks[k].settings['max_abs_path_difference']:.1e}"
        ax1.text(x, 0.5 * m, text, ha="center", va="center", fontsize=8, color="k",
                 bbox=dict(facecolor="white", alpha=0.85, edgecolor="none"))
    ax1.set_xticks(xs, list(schedules))
    ax1.set_ylabel(r"$\mathbb{E}_x L_\infty(x)$  (nats)")
    ax1.set_title("(b) L_∞, exact denoiser, the same (x, ε) paths (±3 SE)")

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
        "L_inf_cosine_minus_linear": checks["cosine"].gap,
        "L_inf_monotone_minus_linear": checks["monotone net"].gap,
        "max_path_difference": max(c.settings["max_abs_path_difference"] for c in checks.values()),
        "L_inf_se": means["linear"][1],
        f"L_{T_list[-1]}_minus_L_inf": float(gaps[-1, 0]),
        "L_T_decreasing": monotone,
    }
    lines = ["| schedule | E L_∞ ± SE (n = %d) | invariance check vs linear (mean and largest per-path difference, "
             "holds) |" % n, "|---|---|---|"]
    for k in schedules:
        c = checks.get(k)
        lines.append(f"| {k} | {means[k][0]:.4f} ± {means[k][1]:.4f} | "
                     + ("—" if c is None else f"{c.name}: {c.gap:+.1e}, max {c.settings['max_abs_path_difference']:.1e}, "
                                              f"holds = {c.holds}") + " |")
    lines += ["", "| T | E L_T ± SE | E[L_T − L_∞] ± SE (paired) |", "|---|---|---|"]
    lines += [f"| {T} | {lt[j, 0]:.4f} ± {lt[j, 1]:.4f} | {gaps[j, 0]:.4f} ± {gaps[j, 1]:.4f} |" for j, T in enumerate(T_list)]
    lines += ["", f"L_T on the same {n} data points (independent ε per step), L_∞ = {li:.4f} ± {li_se:.4f} on the same points "
              "(independent ε per node). The schedules' L_∞ above use one ε per path at every node, so that each path is "
              "the same function integrated under each schedule: the same expectation on other draws, with a larger SE."]
    caption = CAPTION.format(max_path_difference=f"{summary['max_path_difference']:.0e} nats")
    return FigureOutput(files=ctx.save(fig, "fig4_vdm"), summary=summary, report_lines=lines, caption=caption)
