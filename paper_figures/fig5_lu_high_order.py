"""Figure 5 — Lu et al. 2022's high-order denoising score matching on their 1-D mixture (THEORY.md §3.3–3.8).

The presets ``lu_mog1d_first``/``_second``/``_third`` of training.configs (the "mog" toy of Lu et
al.: weights (0.3, 0.3, 0.4), means (−2, −6, 4)/7, variances (0.1, 0.1, 1)/49; VP SDE, t_min =
1e-5; MLP noise predictor) are trained with the training package's own objectives
(training.objectives.make_objective: first-order DSM with λ = g² and importance-sampled t, then
the second- and third-order objectives of numerics.high_order, exact in 1-D, weights 1, 0.5, 0.1)
and optimiser (training.train.build_optimizer), in one jitted scan per run (no EMA, no
checkpoints). The fair baseline for the fine-tuned models is the first-order model trained for the
same number of extra steps ("first order, continued"), from the same checkpoint.

Left: the ODE model densities p^ODE = exp(log p^ODE) on a grid (training.evaluate.ode_nll,
exact trace, rtol = atol = 1e-5) against q_0, with each model's NLL on test samples. Right: the
first-, second- and third-order score errors E_{q_t}|s − ∇log q_t|², |∂s − ∂²log q_t|²,
|∂²s − ∂³log q_t|² over t (the mixture's exact score, hessian and grad_laplacian).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import numerics
from numerics.high_order import score_jacobian_and_grad_trace
from paper_figures._common import Context, FigureOutput, plt
from training import evaluate as ev
from training.configs import get_config
from training.data import get_mixture
from training.objectives import make_objective
from training.train import build_model, build_optimizer, build_sde

NAME = "lu_high_order"
TITLE = "Figure 5: high-order denoising score matching (Lu et al. 2022) on their 1-D mixture"
PAPER = "Lu et al. 2022, §4 (Eqs. 13–15, error-bounded training) and App. toy; THEORY.md §3.3–3.8"
CAPTION = (
    "Score models of Lu et al.'s 1-D three-component mixture trained with first-order DSM and fine-tuned with the "
    "second- and third-order DSM objectives (THEORY.md §3.5–3.7, Lu et al. §4): the left panel compares the "
    "probability-flow ODE densities with q_0 and gives each model's NLL and, for the fine-tuned ones, its paired "
    "difference from first-order training continued (on the same test points), the right panels the first-, second- and "
    "third-order score errors over t that bound KL(q_0 ‖ p^ODE) through the Fisher-divergence dynamics (§3.3). "
    "The fine-tuned models are compared with first-order training continued for the same steps; runs are "
    "{n1} first-order CPU steps at batch {batch} and {n_ft} more steps of each objective (Lu et al. train 100k), "
    "so the NLL gains are small."
)

F32 = jnp.float32


def lu_mixture() -> numerics.GaussianMixture:
    """THEORY.md §3.8 "mog" (training.data's ``lu_mog_1d``): weights (0.3, 0.3, 0.4), means
    (−2, −6, 4)/7, variances (0.1, 0.1, 1)/49."""
    return get_mixture("lu_mog_1d")


def _make_trainer(static, cfg, q32, tx, batch: int):
    objective = make_objective(static, cfg, train=False)

    def loss_fn(params, key):
        k_x, k_l = jax.random.split(key)
        x0 = q32.sample(k_x, batch).astype(F32)
        return objective(params, x0, k_l)[0]

    @eqx.filter_jit
    def run(params, opt_state, key, n_steps: int):
        def body(carry, k):
            p, o = carry
            loss, g = jax.value_and_grad(loss_fn)(p, k)
            upd, o = tx.update(g, o, p)
            return (eqx.apply_updates(p, upd), o), loss

        (params, opt_state), losses = jax.lax.scan(body, (params, opt_state), jax.random.split(key, n_steps))
        return params, opt_state, losses

    return run


@eqx.filter_jit
def _score_errors(model, q, sde, t, x):
    """E|s − ∇log q_t|², E|∂s − ∇²log q_t|², E|∂²s − ∇Δlog q_t|² at one t over the points x ~ q_t."""
    q_t = q._diffuse(sde.mean_coeff(t), sde.variance(t))
    s, jac, s3 = jax.vmap(lambda z: score_jacobian_and_grad_trace(model, z, t))(x)
    e1 = jnp.mean(jnp.sum((s - q_t.score(x)) ** 2, -1))
    e2 = jnp.mean(jnp.sum((jac - q_t.hessian(x)) ** 2, (-2, -1)))
    e3 = jnp.mean(jnp.sum((s3 - q_t.grad_laplacian(x)) ** 2, -1))
    return jnp.stack([e1, e2, e3])


def make(ctx: Context) -> FigureOutput:
    q = lu_mixture()
    q32 = jax.tree.map(lambda a: a.astype(F32) if eqx.is_inexact_array(a) else a, q)
    size = [f"model.depth={ctx.size(2, 1)}"]
    cfgs = {name: get_config(f"lu_mog1d_{name}", size) for name in ("first", "second", "third")}
    sde = build_sde(cfgs["first"].sde)
    n1, n_ft = ctx.size(3000, 150), ctx.size(1000, 60)
    batch = ctx.size(1024, 256)
    key = jax.random.key(ctx.seed + 5)
    net = build_model(cfgs["first"].model, (1,), jax.random.fold_in(key, 0))
    params, static = eqx.partition(net, eqx.is_inexact_array)
    tx, _ = build_optimizer(cfgs["first"].optim)  # Adam with warm-up for the first-order run
    tx_ft, _ = build_optimizer(cfgs["second"].optim)  # no warm-up for the continued / fine-tuning runs

    trained = {}
    p1, _, _ = _make_trainer(static, cfgs["first"], q32, tx, batch)(params, tx.init(params), jax.random.fold_in(key, 1), n1)
    # the three continuations share their data and t draws (same key): a paired comparison
    k_ft = jax.random.fold_in(key, 2)
    for name, label in (("first", "first order, continued"), ("second", "second order (fine-tuned)"),
                        ("third", "third order (fine-tuned)")):
        p, _, _ = _make_trainer(static, cfgs[name], q32, tx_ft, batch)(p1, tx_ft.init(p1), k_ft, n_ft)
        trained[label] = p

    n_grid, n_test, n_mc, n_t = ctx.size(240, 60), ctx.size(1000, 150), ctx.size(2000, 300), ctx.size(20, 6)
    grid = np.linspace(-1.4, 1.2, n_grid)[:, None]
    k_test, k_mc = jax.random.split(jax.random.fold_in(key, 9))
    x_test = q.sample(k_test, n_test)
    true_nll = -np.asarray(q.log_prob(x_test))
    t_grid = np.geomspace(sde.t_min, sde.T, n_t)

    fig = plt.figure(figsize=(15, 4.3))
    gs = fig.add_gridspec(1, 4, width_ratios=[1.5, 1, 1, 1])
    ax0 = fig.add_subplot(gs[0])
    ax_err = [fig.add_subplot(gs[i]) for i in (1, 2, 3)]
    ax0.plot(grid[:, 0], np.exp(np.asarray(q.log_prob(jnp.asarray(grid)))), "k-", lw=2.2, alpha=0.6,
             label=f"data q₀ (−log q on test: {true_nll.mean():.3f})")
    summary = {"true_nll": float(true_nll.mean())}
    lines = ["| model | ODE NLL (nats, mean ± SE) | NLL − (−log q) (paired) | NLL − first order, continued (paired) |",
             "|---|---|---|---|"]
    base_ex = None
    for i, (label, p) in enumerate(trained.items()):
        model = ev.EpsModel(eqx.combine(p, static), sde)
        both = ev.ode_nll(model, sde, jnp.concatenate([jnp.asarray(grid), x_test]))  # one compiled solve
        dens = np.exp(-both.values[:n_grid])
        nll = ev.Estimate(both.values[n_grid:], both.stderr[n_grid:])
        ex = nll.minus(true_nll)  # paired on the test points
        key_name = label.split()[0]
        if base_ex is None:
            base_ex, vs, legend_vs = ex, "—", ""
        else:
            dd = ex.minus(base_ex.values)  # NLL − first order's, paired: the claim rests on this, not on NLL ± SE
            vs = f"{dd.mean:+.4f} ± {dd.se:.4f}"
            legend_vs = f"\n  vs first order, continued: {vs} (paired)"
            summary[f"nll_vs_first_{key_name}"] = dd.mean
        ax0.plot(grid[:, 0], dens, color=f"C{i}", lw=1.3, ls=("-", "--", ":")[i],
                 label=f"{label}: NLL {nll}{legend_vs}")
        errs = np.array([np.asarray(_score_errors(model, q, sde, jnp.asarray(t), q.diffuse(sde, t).sample(
            jax.random.fold_in(k_mc, j), n_mc))) for j, t in enumerate(t_grid)])
        for k, ax in enumerate(ax_err):
            ax.loglog(t_grid, errs[:, k], color=f"C{i}", ls=("-", "--", ":")[i], marker=".", label=label)
        summary[f"nll_{key_name}"] = nll.mean
        summary[f"score_err1_mean_{key_name}"] = float(errs[:, 0].mean())
        lines.append(f"| {label} | {nll} | {ex.mean:.4f} ± {ex.se:.4f} | {vs} |")
    ax0.set_xlabel("x")
    ax0.set_ylabel("density")
    ax0.set_title(f"ODE densities ({n1} first-order + {n_ft} steps each)")
    ax0.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=1)
    ax0.set_ylim(0, None)
    titles = ("1st order: E|s − ∂log q_t|²", "2nd order: E|∂s − ∂²log q_t|²", "3rd order: E|∂²s − ∂³log q_t|²")
    for ax, title in zip(ax_err, titles):
        ax.set_xlabel("diffusion time t")
        ax.set_title(title, fontsize=9)
    ax_err[0].set_ylabel("squared error under q_t")
    ax_err[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    lines += ["", f"VP SDE, t_min = 1e-5; batch {batch}; first order {n1} steps, then {n_ft} steps of each objective "
              "from that model (presets lu_mog1d_first/second/third; paired draws); "
              f"NLL on {n_test} test samples; score errors on {n_mc} samples of q_t per t."]
    return FigureOutput(files=ctx.save(fig, "fig5_lu_high_order"), summary=summary, report_lines=lines,
                        caption=CAPTION.format(n1=n1, n_ft=n_ft, batch=batch))
