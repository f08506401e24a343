"""Figure 2 — the exact KL dynamics of two diffused laws (Song et al. 2021 App. A; Lu et al. 2022 §3;
Li & Yan 2024 §5.5; THEORY.md §5.5).

For the data mixture q and the model mixture p of ``numerics.checks.cases`` pushed through the same linear SDE,

    KL(q_t ‖ p_t) = KL(q_T ‖ p_T) + ½ ∫_t^T g(s)² E_{q_s}‖∇log q_s − ∇log p_s‖² ds      for every t.

Left side: Monte Carlo of log q_t − log p_t at x_t = α_t x₀ + σ_t ε with the exact mixture densities.
Right side: the same per-path log-SNR Gauss–Legendre quadrature as
``numerics.checks.kl_dynamics.check_kl_dynamics`` (``engine.time_grid`` on [t, T], ``engine.eval_on_paths``
with ``kl_dynamics.score_gap_integrand``), plus the MC KL(q_T ‖ p_T); x₀ is common to both sides and to all t.
The official check at t = 0 is reported beside the figure.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import numerics
from numerics.checks import engine, kl_dynamics
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


def _log_ratio(q, p, sde, t, x_t):
    """log q_t(x_t) − log p_t(x_t) with the exact diffused mixtures."""
    return np.asarray(q.diffuse(sde, t).log_prob(x_t) - p.diffuse(sde, t).log_prob(x_t))


def _curves(q, p, sde, t_eval, x0, key, n_panels, order):
    """Per t: (LHS mean, SE), (RHS mean, SE), paired SE of LHS − RHS; all on common x₀."""
    k_eps, k_nodes = jax.random.split(key)
    eps = jax.random.normal(k_eps, x0.shape, dtype=x0.dtype)
    T = float(sde.T)
    aT, sT = sde.mean_coeff(jnp.asarray(T)), sde.std(jnp.asarray(T))
    klT_i = _log_ratio(q, p, sde, T, aT * x0 + sT * eps)
    scores = (q.score_fn(sde), p.score_fn(sde))
    out = []
    for j, t in enumerate(t_eval):
        a, s = sde.mean_coeff(jnp.asarray(t)), sde.std(jnp.asarray(t))
        lhs_i = _log_ratio(q, p, sde, t, a * x0 + s * eps)
        grid = engine.time_grid(sde, float(t), T, n_panels=n_panels, order=order)
        alpha, sigma, _, _ = engine.grid_coeffs(sde, grid.t)
        node_eps = engine.path_noise(jax.random.fold_in(k_nodes, j), x0.shape[0], grid.n, q.dim)
        vals = engine.eval_on_paths(kl_dynamics.score_gap_integrand, scores, x0, node_eps, grid.t, alpha, sigma)
        rhs_i = klT_i + np.asarray(vals @ jnp.asarray(grid.w_g2))
        lhs, rhs, se_diff = engine.paired(lhs_i, rhs_i)
        out.append((lhs, engine.mc_mean(lhs_i)[1], rhs, engine.mc_mean(rhs_i)[1], se_diff))
    return np.array(out), engine.mc_mean(klT_i)


def make(ctx: Context) -> FigureOutput:
    q, p = data_mixture(), model_mixture()
    sdes = {"VP SDE": numerics.VPSDE(t_min=1e-3), "VE SDE": numerics.VESDE(t_min=1e-3)}
    n, n_t = ctx.size(4096, 512), ctx.size(16, 8)
    n_panels, order = 8, 12
    key = jax.random.key(ctx.seed + 2)
    k_x, k_paths, k_check = jax.random.split(key, 3)
    x0 = q.sample(k_x, n)

    fig, axes = plt.subplots(2, 2, figsize=(11.5, 5.6), sharex="col", gridspec_kw=dict(height_ratios=(3, 1.3)))
    summary, lines = {}, ["| SDE | t | KL(q_t‖p_t) ± SE | KL(q_T‖p_T) + ½∫g²E‖Δs‖² ± SE | z = diff / paired SE |",
                          "|---|---|---|---|---|"]
    max_z = 0.0
    for col, (label, sde) in enumerate(sdes.items()):
        # times equispaced in log-SNR (where the integrands vary), from t_min to 0.9 T
        lam = np.linspace(float(sde.log_snr(jnp.asarray(sde.t_min))), float(sde.log_snr(jnp.asarray(0.9 * sde.T))), n_t)
        t_eval = np.clip(np.asarray(sde.inverse_log_snr(jnp.asarray(lam))), sde.t_min, 0.9 * float(sde.T))
        res, (klT, klT_se) = _curves(q, p, sde, t_eval, x0, jax.random.fold_in(k_paths, col), n_panels, order)
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
                         f"{z[j]:+.2f} |")
        # The official identity check from t = 0 (with the [0, t_min] piece), on its own samples.
        chk = kl_dynamics.check_kl_dynamics(q, p, sde, seed=ctx.seed, n_samples=n, n_panels=n_panels, order=order)
        summary[f"check_t0_z_{key_}"] = chk.z_score()
        lines.append(f"| {label} (check, t = 0) | 0 | {chk.settings['KL_0']:.4f} ± {chk.settings['KL_0_se']:.4f} | "
                     f"{chk.settings['KL_T'] + chk.rhs:.4f} | {chk.z_score():+.2f} (holds: {chk.holds}) |")
    fig.tight_layout()
    summary["max_abs_z"] = max_z
    lines += ["", f"{n} paths (x₀ common to both sides and all t), {n_panels}×{order} Gauss–Legendre nodes in log-SNR "
              f"per interval [t, T]; largest |z| over the {n_t} times per SDE: {max_z:.2f}."]
    return FigureOutput(files=ctx.save(fig, "fig2_kl_dynamics"), summary=summary, report_lines=lines)
