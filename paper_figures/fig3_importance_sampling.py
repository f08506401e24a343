"""Figure 3 — importance sampling of t (Song et al. 2021, §5; THEORY.md §2.6).

Left: the integrand of the likelihood-weighted DSM objective, ½ g(t)² E‖s(x_t, t) + ε/σ_t‖², over t,
for the exact score and for a wrong model, beside the importance density p(t) ∝ g²/σ² (own axis). Right: the
per-example variance of the unbiased J_DSM estimators with uniform t and with t ~ p(t), by quadrature over t
(numerics.checks.importance.estimator_moments; bars) and as the sample variance of the draws (dots); the
labels give each sample mean ± SE and its z against the quadrature value of J_DSM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import numerics
from numerics.__main__ import demo_mixture
from numerics.checks.importance import estimator_moments
from numerics.losses import dsm_loss, dsm_loss_terms
from paper_figures._common import Context, FigureOutput, plt

NAME = "importance_sampling"
TITLE = "Figure 3: importance sampling of the diffusion time"
PAPER = "Song et al. 2021, §5 (Eq. 7 with p(t) ∝ g²/σ²); THEORY.md §2.6"
CAPTION = (
    "The likelihood-weighted DSM integrand grows like D/(2t) as t → 0, so sampling t uniformly gives an estimator "
    "whose variance is dominated by rare small times; drawing t from p(t) ∝ g²/σ² (log-SNR uniform, exact inverse CDF) "
    "flattens it. Both estimators are unbiased for J_DSM(θ; g²) of Song et al.'s Eq. 7. The right panel's bars are "
    "each estimator's per-example variance by quadrature over t (Monte Carlo over x₀ and ε only), the dots the "
    "sample variance of {n_est} draws, and the labels each sample mean ± SE with its z against the quadrature value "
    "of J_DSM. The uniform-t estimator is heavy-tailed: its sample variance, and so its SE, usually falls short of "
    "the true one (here {short_exact} of it for the exact score), so its z is only a rough guide."
)


def _models(sde):
    data = demo_mixture()
    other = numerics.GaussianMixture(data.weights, 1.3 * data.means, data.covariances * 2.0)
    return data, {"exact score": data.score_fn(sde), "wrong model (another mixture's score)": other.score_fn(sde)}


def make(ctx: Context) -> FigureOutput:
    sde = numerics.VPSDE(t_min=1e-4)
    data, models = _models(sde)
    n_grid, n_mc, n_est = ctx.size(40, 12), ctx.size(4000, 400), ctx.size(40000, 4000)
    key = jax.random.key(ctx.seed + 3)
    t_grid = np.geomspace(sde.t_min, sde.T, n_grid)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    summary, lines = {}, ["| model | estimator | sample mean J_DSM ± SE (z vs quadrature) | per-example variance "
                          "(quadrature over t ± SE) | sample variance of the draws |", "|---|---|---|---|---|"]
    k_x, k_eps, k_est = jax.random.split(key, 3)
    x0 = data.sample(k_x, n_mc)
    eps = jax.random.normal(k_eps, x0.shape)
    for (label, model), color in zip(models.items(), ("C0", "C3")):
        integrand, se = [], []
        for t in t_grid:
            tt = jnp.full((n_mc,), t)
            # 'g2' terms are (T − t_min)·½ g²‖s + ε/σ‖² at the given t: divide the constant out for the integrand.
            vals = np.asarray(dsm_loss_terms(model, sde, x0, tt, eps, "g2")) / (sde.T - sde.t_min)
            integrand.append(vals.mean())
            se.append(vals.std(ddof=1) / np.sqrt(n_mc))
        integrand, se = np.array(integrand), np.array(se)
        ax1.loglog(t_grid, integrand, color=color, label=f"integrand, {label}")
        ax1.fill_between(t_grid, np.maximum(integrand - 3 * se, 1e-12), integrand + 3 * se, color=color, alpha=0.2)
        x_est = data.sample(jax.random.fold_in(k_est, 0), n_est)
        short = "exact" if label == "exact score" else "wrong"
        quad = estimator_moments(data, model, sde, seed=ctx.seed + 31, n_samples=ctx.size(2048, 256))
        summary[f"J_quadrature_{short}"] = quad["g2_is"]["mean"]
        for j, (w, hatch) in enumerate((("g2", ""), ("g2_is", "//"))):
            vals = np.asarray(dsm_loss(model, sde, x_est, jax.random.fold_in(k_est, 1 + j), weighting=w))
            mean, err, var = vals.mean(), vals.std(ddof=1) / np.sqrt(n_est), vals.var(ddof=1)
            z = (mean - quad[w]["mean"]) / np.hypot(err, quad[w]["mean_se"])
            name = "uniform t" if w == "g2" else "t ~ p(t) (IS)"
            kind = "uniform" if w == "g2" else "is"
            xpos = list(models).index(label) * 2.5 + j
            ax2.bar(xpos, quad[w]["var"], color=color, hatch=hatch, alpha=0.75, edgecolor="k")
            ax2.plot(xpos, var, "ko", ms=4)
            ax2.text(xpos, quad[w]["var"] * 1.15, f"{mean:.3f}\n± {err:.3f}\nz = {z:+.1f}", ha="center", va="bottom",
                     fontsize=8)
            summary[f"var_{kind}_{short}"] = quad[w]["var"]
            summary[f"sample_var_{kind}_{short}"] = float(var)
            summary[f"z_{kind}_{short}"] = float(z)
            lines.append(f"| {label} | {name} | {mean:.4f} ± {err:.4f} (z = {z:+.1f} against {quad[w]['mean']:.4f} ± "
                         f"{quad[w]['mean_se']:.4f}) | {quad[w]['var']:.4g} ± {quad[w]['second_moment_se']:.2g} "
                         f"| {var:.4g} |")
    # p(t) ∝ g²/σ² (numerics.sde.SDE.importance_pdf): a density in 1/unit t, on its own axis.
    p_is = np.asarray(sde.importance_pdf(jnp.asarray(t_grid)))
    ax1b = ax1.twinx()
    ax1b.loglog(t_grid, p_is, "k--", label="IS density p(t) ∝ g²/σ² (right axis)")
    ax1b.set_ylabel("importance density p(t)  (per unit t)")
    ax1b.spines["right"].set_visible(True)
    ax1b.grid(False)
    ax1.set_xlabel("diffusion time t")
    ax1.set_ylabel("½ g² E‖s + ε/σ‖²  (nats per unit t)")
    ax1.set_title("DSM integrand (VP SDE, 2-D mixture)")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax1b.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=8)
    ax2.set_yscale("log")
    ax2.set_xticks([0.5, 3.0], ["exact score", "wrong model"])
    ax2.set_ylabel("per-example variance of the estimator (nats², quadrature)")
    ax2.set_title("Uniform t (plain) vs importance sampling (hatched)\nbars: variance by quadrature; dots: sample variance",
                  fontsize=10)
    low = min(v for k, v in summary.items() if k.startswith(("var_is", "sample_var_is")))
    ax2.set_ylim(bottom=low / 5, top=ax2.get_ylim()[1] * 10)
    for m in ("exact", "wrong"):
        summary[f"variance_ratio_{m}"] = summary[f"var_uniform_{m}"] / summary[f"var_is_{m}"]
    fig.tight_layout()
    lines += ["", f"Variance reduction by IS (quadrature): {summary['variance_ratio_exact']:.0f}× (exact score), "
              f"{summary['variance_ratio_wrong']:.0f}× (wrong model); bar labels give the sample mean ± SE and its z "
              "against the quadrature value of J_DSM."]
    caption = CAPTION.format(n_est=n_est,
                             short_exact=f"{summary['sample_var_uniform_exact'] / summary['var_uniform_exact']:.0%}")
    return FigureOutput(files=ctx.save(fig, "fig3_importance_sampling"), summary=summary, report_lines=lines,
                        caption=caption)
