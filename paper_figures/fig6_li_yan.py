"""Figure 6 — Li & Yan 2024's score-based density formula (THEORY.md §5.2–5.3).

Under the forward SDE dX = −X/(2(1−t)) dt + dB/√(1−t) (``numerics.LiYanSDE``: α_t² = 1 − t, σ_t² = t), the
exact log-density of the data is an expectation over forward paths from x of a functional of the scores:

    log q_0(x) = E[log q_T(X_T) | x] − ½ ∫_0^T { (1/(1−t)) E‖s_t(X_t) + (X_t − √(1−t) x)/t‖² − D/t } dt   (DSM form)

and its score-matching (Stein) form (THEORY.md Eq. 5.1). For the 2-D data mixture of
``numerics.checks.cases`` with its exact scores, the Monte-Carlo estimate of
``numerics.checks.li_yan2024.check_density_formula`` converges to the exact log q_0(x) at three points as the
number of forward paths N grows; the estimate with N = m·n₀ paths pools the first m independent runs of n₀ paths
(one compilation). The fourth panel is the DDPM (discrete-time) form, ``check_ddpm_formula``, against the number of
steps K with β_k scaled as 1000/K (THEORY.md §5.3), its expectations over the noise by Gauss–Hermite quadrature: the
error of the sum itself and of its Richardson extrapolation.
"""

from __future__ import annotations

import numpy as np

from numerics.checks import li_yan2024
from numerics.checks.cases import data_mixture
from paper_figures._common import Context, FigureOutput, plt

NAME = "li_yan"
TITLE = "Figure 6: Li & Yan's score-based density formula"
PAPER = "Li & Yan 2024, density formula (THEORY.md Eq. 5.1, DSM and SM forms) and its DDPM form (§5.3)"
CAPTION = (
    "Li & Yan's density formula (THEORY.md Eq. 5.1) writes log q_0(x) as an expectation over forward paths X_t | X_0 = x "
    "of a time integral of the exact scores; its Monte-Carlo estimate (DSM and score-matching forms, ±3 SE) converges to the "
    "exact log-density of a 2-D mixture at three points as the number of paths N grows, with SE ∝ N^(−1/2). "
    "The DDPM discretisation of the same formula (THEORY.md §5.3, β_k scaled as 1000/K), with its expectations over the "
    "noise taken by Gauss–Hermite quadrature (no Monte-Carlo error), has a bias that falls like 1/K (first order) "
    "({ddpm_err_1000} nats at K = 1000, ratio {ddpm_ratio} per doubling), and its Richardson extrapolation "
    "2 S_2K − S_K equals the exact log-density to {ddpm_richardson_1000} nats."
)

POINTS = ((0.4, 0.3), (-1.0, 0.5), (1.5, -1.0))


def _pooled(results):
    """Prefix-pooled estimates of independent equal-size runs: (m, mean, SE) for m = 1, 2, 4, …, M."""
    est = np.array([r.lhs for r in results])
    se = np.array([r.stderr for r in results])
    ms = 2 ** np.arange(int(np.log2(len(results))) + 1)
    return ms, np.array([est[:m].mean() for m in ms]), np.array([np.sqrt(np.sum(se[:m] ** 2)) / m for m in ms])


def make(ctx: Context) -> FigureOutput:
    q = data_mixture()
    n0, n_runs = 32, ctx.size(128, 16)
    Ks = (50, 100, 250, 1000) if not ctx.reduced else (50, 1000)

    fig, axes = plt.subplots(2, 2, figsize=(11.5, 8.0))
    summary, lines = {}, ["| x | exact log q_0(x) | form | N | estimate ± SE | z |", "|---|---|---|---|---|---|"]
    max_z = 0.0
    for i, (x, ax) in enumerate(zip(POINTS, axes.flat)):
        runs = [li_yan2024.check_density_formula(q, np.array(x), seed=ctx.seed + 1000 * i + s, n_samples=n0)
                for s in range(n_runs)]
        exact = runs[0][0].rhs
        ax.axhline(exact, color="k", lw=1.2, label=f"exact log q₀(x) = {exact:.4f}")
        for j, (form, color, off) in enumerate((("DSM form", "C0", 0.94), ("SM (Stein) form", "C3", 1.06))):
            ms, est, se = _pooled([r[j] for r in runs])
            N = ms * n0
            ax.fill_between(N, est - 3 * se, est + 3 * se, color=color, alpha=0.15)
            ax.errorbar(N * off, est, yerr=3 * se, fmt="o-", ms=4, color=color, capsize=2, label=f"{form}, ±3 SE")
            z = (est[-1] - exact) / se[-1]
            max_z = max(max_z, float(abs(z)))
            lines.append(f"| ({x[0]:g}, {x[1]:g}) | {exact:.4f} | {form} | {N[-1]} | {est[-1]:.4f} ± {se[-1]:.4f} | {z:+.2f} |")
            summary[f"se_{'dsm' if j == 0 else 'sm'}_x{i}"] = float(se[-1])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("number of forward paths N")
        ax.set_ylabel("log-density (nats)")
        ax.set_title(f"x = ({x[0]:g}, {x[1]:g})")
        ax.legend(fontsize=8, loc="upper right")
    summary["max_abs_z"] = max_z

    ax = axes.flat[3]
    x = np.array(POINTS[0])
    ddpm = [li_yan2024.check_ddpm_formula(q, x, K=K, beta_min=1e-4 * 1000 / K, beta_max=0.02 * 1000 / K,
                                          noise="quadrature") for K in Ks]
    err = np.array([r.settings["ddpm_sum_error"] for r in ddpm])
    rich = np.array([r.gap for r in ddpm])
    Kf = np.geomspace(Ks[0], Ks[-1], 50)
    ax.plot(Kf, abs(err[-1]) * Ks[-1] / Kf, "k--", lw=1, label="∝ 1/K (through K = %d)" % Ks[-1])
    ax.plot(Ks, np.abs(err), "s-", color="C2", label="|S_K − log q₀(x)|: the DDPM sum (quadrature in ε)")
    ax.plot(Ks, np.abs(rich), "o:", color="C4", label="|2 S_2K − S_K − log q₀(x)|: Richardson")
    ax.axhline(ddpm[-1].settings["atol"], color="C4", lw=0.8, alpha=0.6, label="the check's tolerance at K = 1000 (1e-4·D)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(Ks, [str(K) for K in Ks])
    ax.set_xlabel("number of DDPM steps K (β_k ∈ [0.1, 20]/K)")
    ax.set_ylabel("error of log q₀(x) (nats, log scale)")
    ax.set_title(f"DDPM (discrete-time) form at x = ({x[0]:g}, {x[1]:g})")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()

    summary["ddpm_err_K1000"] = float(err[-1])
    summary["ddpm_richardson_K1000"] = float(rich[-1])
    summary["ddpm_ratio"] = float(ddpm[-1].settings["error_ratio_per_doubling"])
    lines += ["", "| K (DDPM) | ᾱ_K | S_K − exact | error ratio (S_2K − exact)/(S_K − exact) | 2 S_2K − S_K − exact |",
              "|---|---|---|---|---|"]
    lines += [f"| {K} | {r.settings['alphabar_K']:.1e} | {r.settings['ddpm_sum_error']:+.3e} | "
              f"{r.settings['error_ratio_per_doubling']:.4f} | {r.gap:+.1e} |" for K, r in zip(Ks, ddpm)]
    lines += ["", "The Richardson value's own error is second order (∝ 1/K²); the theorem table's check "
              "(``ly_ddpm_formula``) is at K = 1000, to 1e-4·D."]
    lines += ["", f"Density formula: {n_runs} independent runs of {n0} paths per point (8×12 log-SNR Gauss–Legendre nodes, "
              "Gaussian control variate); the estimate at N pools the first N/32 runs. Largest |z| at the largest N: "
              f"{max_z:.2f}."]
    caption = CAPTION.format(ddpm_err_1000=f"{summary['ddpm_err_K1000']:.1e}", ddpm_ratio=f"{summary['ddpm_ratio']:.3f}",
                             ddpm_richardson_1000=f"{abs(summary['ddpm_richardson_K1000']):.0e}")
    return FigureOutput(files=ctx.save(fig, "fig6_li_yan"), summary=summary, report_lines=lines, caption=caption)
