"""Figure 2 — the exact KL dynamics of two diffused laws (Song et al. 2021 App. A; Lu et al. 2022 §3;
Li & Yan 2024 §5.5; THEORY.md §5.5).

For the data mixture q and the model mixture p of ``numerics.checks.cases`` pushed through the same linear SDE,

    KL(q_t ‖ p_t) = KL(q_T ‖ p_T) + ½ ∫_t^T g(s)² E_{q_s}‖∇log q_s − ∇log p_s‖² ds      for every t.

Every point is one call of the report's check ``numerics.checks.kl_dynamics.check_kl_dynamics`` with
start time t0 = t (its identity KL(q_t‖p_t) − KL(q_T‖p_T) = ½∫_t^T …): left side its Monte Carlo of
log q_t − log p_t at x_t = α_t x₀ + σ_t ε with the exact mixture densities (``settings["KL_0"]``), right side
its MC KL(q_T ‖ p_T) plus its per-path log-SNR quadrature of the integral; the error band of the
difference is the check's paired SE. One seed for every call, so x₀ is common to both sides and to all t
(and the quadrature's shapes are the same for every t > 0: one compilation per SDE). The check at t = 0
(with the [0, t_min] piece) is reported beside the figure.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import numerics
from numerics.checks import kl_dynamics
from numerics.checks.cases import data_mixture, model_mixture
from paper_figures._common import Context, FigureOutput, plt

NAME = "kl_dynamics"
TITLE = "Figure 2: KL dynamics of the diffused data and model laws"
PAPER = "Song et al. 2021 App. A / Lu et al. 2022 §3 / Li & Yan 2024 §5.5 (KL dynamics identity); THEORY.md §5.5"
CAPTION = (
    "KL(q_t‖p_t) between a diffused 2-D data mixture and a diffused model mixture (Monte Carlo with the exact densities) "
    "coincides at every t with KL(q_T‖p_T) + ½∫_t^T g² E_{q_s}‖∇log q_s − ∇log p_s‖² ds (per-path log-SNR quadrature), "
    "for the VP and the VE SDE — the KL dynamics identity behind Song et al.'s Theorem 1 (App. A) and Li & Yan's "
    "§5.5 (THEORY.md §5.5). The lower panels show the difference of the two sides with its paired ±3 SE band."
)


def _curves(q, p, sde, t_eval, seed, n, n_panels, order):
    """Per t: the check's (KL(q_t‖p_t), its SE, KL(q_T‖p_T) + ½∫_t^T g² E‖Δs‖², its SE, paired SE of the
    difference),
    and (KL(q_T‖p_T), SE) — one :func:`kl_dynamics.check_kl_dynamics` call per t, all with the same seed."""
    out, chk = [], None
    for t in t_eval:
        chk = kl_dynamics.check_kl_dynamics(q, p, sde, seed=seed, n_samples=n, t0=float(t), n_panels=n_panels,
                                            order=order)
        st = chk.settings
        out.append((st["KL_0"], st["KL_0_se"], st["KL_T"] + chk.rhs, st["KL_T_plus_rhs_se"], chk.stderr))
    return np.array(out), (chk.settings["KL_T"], chk.settings["KL_T_se"])


def make(ctx: Context) -> FigureOutput:
    q, p = data_mixture(), model_mixture()
    sdes = {"VP SDE": numerics.VPSDE(t_min=1e-3), "VE SDE": numerics.VESDE(t_min=1e-3)}
    n, n_t = ctx.size(4096, 512), ctx.size(16, 8)
    n_panels, order = 8, 12
    seed = ctx.seed + 2

    fig, axes = plt.subplots(2, 2, figsize=(11.5, 5.6), sharex="col", gridspec_kw=dict(height_ratios=(3, 1.3)))
    summary, lines = {}, ["| SDE | t | KL(q_t‖p_t) ± SE | KL(q_T‖p_T) + ½∫g²E‖Δs‖² ± SE | difference ± paired SE | "
                          "z = diff / paired SE |", "|---|---|---|---|---|---|"]
    max_z = 0.0
    for col, (label, sde) in enumerate(sdes.items()):
        # times equispaced in log-SNR (where the integrands vary), from t_min to 0.9 T
        lam = np.linspace(float(sde.log_snr(jnp.asarray(sde.t_min))), float(sde.log_snr(jnp.asarray(0.9 * sde.T))), n_t)
        t_eval = np.clip(np.asarray(sde.inverse_log_snr(jnp.asarray(lam))), sde.t_min, 0.9 * float(sde.T))
        res, (klT, klT_se) = _curves(q, p, sde, t_eval, seed, n, n_panels, order)
        lhs, lhs_se, rhs, rhs_se, se_d = res.T
        ax, axd = axes[0, col], axes[1, col]
        ax.plot(t_eval, lhs, "-", color="C0", label="KL(q_t‖p_t)  (MC, exact densities)")
        ax.fill_between(t_eval, lhs - 3 * lhs_se, lhs + 3 * lhs_se, color="C0", alpha=0.25, label="±3 SE")
        ax.errorbar(t_eval, rhs, yerr=3 * rhs_se, fmt="o", ms=4, color="C3", capsize=2,
                    label="KL(q_T‖p_T) + ½∫ₜᵀ g² E‖∇log q_s − ∇log p_s‖² ds\n(per-path quadrature), ±3 SE")
        ax.axhline(klT, color="0.5", ls=":", label=f"KL(q_T‖p_T) = {klT:.0e} ± {klT_se:.0e}")
        ax.set_xscale("log")
        ax.set_ylabel("KL (nats)")
        ax.set_title(f"{label} (t_min = {sde.t_min:g}, T = {float(sde.T):g})")
        ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
        ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(0.0, 0.42))
        z = (lhs - rhs) / se_d
        axd.axhline(0.0, color="k", lw=0.8)
        axd.fill_between(t_eval, -3 * se_d, 3 * se_d, color="C2", alpha=0.25, label="±3 paired SE")
        axd.plot(t_eval, lhs - rhs, "o-", ms=3, color="C2", label="left − right side")
        axd.set_xscale("log")
        axd.set_xlabel("diffusion time t")
        axd.set_ylabel("difference (nats)")
        axd.legend(fontsize=7.5, loc="upper left", ncol=2)
        key_ = label.split()[0]
        summary[f"KL_tmin_{key_}"] = float(lhs[0])
        summary[f"max_abs_z_{key_}"] = float(np.max(np.abs(z)))
        max_z = max(max_z, float(np.max(np.abs(z))))
        for j in sorted({0, n_t // 2, n_t - 1}):
            lines.append(f"| {label} | {t_eval[j]:.3g} | {lhs[j]:.4f} ± {lhs_se[j]:.4f} | {rhs[j]:.4f} ± {rhs_se[j]:.4f} | "
                         f"{lhs[j] - rhs[j]:+.4f} ± {se_d[j]:.4f} | {z[j]:+.2f} |")
        # The same check from t = 0 (with the [0, t_min] piece), on the same x₀.
        chk = kl_dynamics.check_kl_dynamics(q, p, sde, seed=seed, n_samples=n, n_panels=n_panels, order=order)
        summary[f"check_t0_z_{key_}"] = chk.z_score()
        lines.append(f"| {label} (check, t = 0) | 0 | {chk.settings['KL_0']:.4f} ± {chk.settings['KL_0_se']:.4f} | "
                     f"{chk.settings['KL_T'] + chk.rhs:.4f} | {chk.gap:+.4f} ± {chk.stderr:.4f} | "
                     f"{chk.z_score():+.2f} (holds: {chk.holds}) |")
    fig.tight_layout()
    summary["max_abs_z"] = max_z
    lines += ["", f"{n} paths (x₀ common to both sides and all t), {n_panels}×{order} Gauss–Legendre nodes in log-SNR "
              f"per interval [t, T] (kl_dynamics.check_kl_dynamics with t0 = t); largest |z| over the {n_t} times "
              f"per SDE: {max_z:.2f}."]
    return FigureOutput(files=ctx.save(fig, "fig2_kl_dynamics"), summary=summary, report_lines=lines)
