"""Li & Yan 2024, *A Score-Based Density Formula, with Applications in Diffusion Generative Models*
(THEORY.md §5).

Forward SDE dX = −X/(2(1−t)) dt + dB/√(1−t): VP with β = 1/(1−t), α_t² = 1 − t, σ_t² = t
(:class:`LiYanSDE`, T = 1 − 10⁻⁶ by default since g² = 1/(1−t) is singular at 1). Density formula
(THEORY.md Eq. 5.1, general form on [0, T]):

    log q_0(x) = E[log q_T(X_T) | x] − ½ ∫_0^T { (1/(1−t)) E‖s_t(X_t) + (X_t − √(1−t) x)/t‖² − D/t } dt   (DSM form)
               = E[log q_T(X_T) | x] − ½ ∫_0^T (1/(1−t)) E[‖s_t‖² + 2∇·s_t + D] dt                       (SM form)

(at T → 1 the first term is −(D/2) log(2πe)). Every form is estimated as the difference from the
same estimator for a reference Gaussian r (:func:`reference_gaussian`) on the same noise, with r's
exact value added back — the control variate. DDPM form (THEORY.md §5.3): with linear β_k, ᾱ_k,
t_k = 1 − ᾱ_k,

    log q_0(x) ≈ E[log q_{t_K}(X_K)|x] − ½ Σ_k ((1−α_k)/α_k) { E‖s_k + (X_k − √ᾱ_k x)/(1−ᾱ_k)‖² − D ᾱ_k/(1−ᾱ_k) }.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from numerics.bounds import prior_cross_entropy
from numerics.checks import engine
from numerics.checks.affine import AffineModel, affine_summary
from numerics.checks.engine import CheckResult
from numerics.mixture import GaussianMixture
from numerics.sde import SDE, LiYanSDE

__all__ = ["LiYanSDE", "check_density_formula", "check_ddpm_formula", "check_elbo_minimiser"]

PAPER = "L&Y24"


def _ly_one(model, x_t, t, eps, sigma):
    """(DSM, SM) integrands of Eq. 5.1 in dt (before the −½) for one score ``model`` at x_t = √(1−t) x + σ ε,
    σ² = t, g² = 1/(1−t). The DSM one also subtracts the mean-zero g²(‖ε‖² − D)/σ², which keeps it O(1)
    rather than O(1/t) near t = 0 (it and −D/t cancel exactly in :func:`_ly_integrand`'s difference)."""
    D = x_t.shape[0]
    s = model(x_t, t)
    g2 = 1.0 / (1.0 - t)
    dsm = g2 * jnp.sum(jnp.square(s + eps / sigma)) - D / t - g2 * (jnp.sum(eps**2) - D) / sigma**2
    sm = g2 * (jnp.sum(s**2) + 2.0 * engine.divergence(model, x_t, t) + D)
    return jnp.stack([dsm, sm])


def _ly_integrand(args, x_t, t, x0, eps, alpha, sigma):
    """(DSM, SM) integrands of the L&Y formula (:func:`_ly_one`) for the model minus the same for the
    reference Gaussian's score on the same (x_t, ε): the control variate, whose formula value log r(x)
    is exact and is added back in :func:`check_density_formula`."""
    model, ref = args
    return _ly_one(model, x_t, t, eps, sigma) - _ly_one(ref, x_t, t, eps, sigma)


def reference_gaussian(q: GaussianMixture) -> GaussianMixture:
    """N(mean of q, (tr Cov/D) I): the control-variate reference density (its formula value is exact)."""
    mean, cov = _mixture_moments(q)
    D = q.dim
    return GaussianMixture(np.ones(1), mean[None, :], (np.trace(cov) / D * np.eye(D))[None])


def check_density_formula(q: GaussianMixture, x, *, sde: LiYanSDE | None = None, seed: int = 0,
                          n_samples: int = 512) -> list[CheckResult]:
    """L&Y Thm (THEORY.md Eq. 5.1): the DSM and SM forms reproduce the exact log q_0(x) (MC, 3 SE)."""
    sde = LiYanSDE() if sde is None else sde
    x = jnp.asarray(x, dtype=jnp.float64)
    D = x.shape[0]
    k1, k2 = jax.random.split(engine.key_from_seed(seed))
    grid = engine.time_grid(sde, 0.0, sde.T, n_panels=8, order=12)
    alpha, sigma, _, _ = engine.grid_coeffs(sde, grid.t)
    x0 = jnp.broadcast_to(x, (n_samples, D))
    eps = engine.path_noise(k1, n_samples, grid.n, D)
    r = reference_gaussian(q)
    vals = engine.eval_on_paths(_ly_integrand, (q.score_fn(sde), r.score_fn(sde)), x0, eps, grid.t, alpha, sigma)
    w = jnp.asarray(grid.w_dt)
    aT, vT = sde.mean_coeff(jnp.asarray(sde.T)), sde.variance(jnp.asarray(sde.T))
    xT = aT * x + jnp.sqrt(vT) * jax.random.normal(k2, (n_samples, D), dtype=jnp.float64)
    # control variate: the same estimator for the reference Gaussian r, whose value is log r(x)
    logqT = engine.diffused_log_prob(q, aT, vT, xT) - engine.diffused_log_prob(r, aT, vT, xT) + float(r.log_prob(x))
    exact = float(q.log_prob(x))
    out = []
    for j, form in enumerate(("dsm", "sm")):
        est_i = logqT - 0.5 * (vals[..., j] @ w)
        m, se = engine.mc_mean(est_i)
        out.append(engine.identity(
            f"ly_density_formula_{form}", PAPER, f"Eq. 5.1 ({form.upper()} form) = log q_0(x)", m, exact, se, atol=1e-8,
            settings=dict(D=D, K=q.n_components, n_samples=n_samples, T=sde.T, quad_nodes=grid.n,
                          prior_term="E log q_T(X_T) exact-MC",
                          control_variate="same estimator for N(mean q, tr Cov/D I) minus its exact log-density", gaussian_prior_value=-0.5 * D * math.log(2 * math.pi * math.e)),
        ))
    return out


def _ddpm_integrand(args, x_t, t, x0, eps, alpha, sigma):
    """‖s + ε/σ‖² − ‖s_r + ε/σ‖² at x_t = √ᾱ x + σ ε (σ² = 1 − ᾱ): the DSM term of the DDPM sum
    (THEORY.md §5.3) for the mixture's score s minus the same term for the reference Gaussian's score
    s_r on the same noise (a control variate; the −Dᾱ/σ² constants cancel in the difference). The
    reference's term is added back outside with its *exact* expectation E‖s_r + ε/σ‖² − Dᾱ/σ²."""
    model, ref = args
    s = model(x_t, t)
    sr = ref(x_t, t)
    return jnp.sum(jnp.square(s + eps / sigma)) - jnp.sum(jnp.square(sr + eps / sigma))


DDPM_QUADRATURE_NODES = 40
"""Gauss–Hermite nodes per dimension of :func:`check_ddpm_formula`'s expectation over ε (tensor product,
D ≤ 2): on the report's mixture 40 and 64 nodes agree to 1e-8 nats at every K of figure 6."""


def _gauss_hermite_noise(D: int, n: int):
    """Nodes ε_i (n^D, D) and weights w_i with E_{ε~N(0, I_D)} f(ε) ≈ Σ w_i f(ε_i) (tensor-product
    Gauss–Hermite, probabilists' weight)."""
    x, w = np.polynomial.hermite_e.hermegauss(n)
    w = w / math.sqrt(2.0 * math.pi)
    grids = np.meshgrid(*([x] * D), indexing="ij")
    wgrids = np.meshgrid(*([w] * D), indexing="ij")
    return np.stack([g.ravel() for g in grids], -1), np.prod(np.stack([g.ravel() for g in wgrids], -1), axis=-1)


def _ddpm_terms(q: GaussianMixture, x, K: int, beta_min: float, beta_max: float, eps, epsK):
    """Per noise draw (or node) i: the DDPM sum of THEORY.md §5.3 with the expectations over X_k | X_0 = x
    replaced by the noise ``eps`` (N, K, D) or (N, D) (the same at every step) and ``epsK`` (N, D) at step
    K, and log q_K(X_K); and ᾱ_K."""
    sde = LiYanSDE()
    D = x.shape[0]
    betas = np.linspace(beta_min, beta_max, K)
    a = 1.0 - betas
    abar = np.cumprod(a)
    t = 1.0 - abar
    alpha, sigma = np.sqrt(abar), np.sqrt(1.0 - abar)
    x0 = jnp.broadcast_to(x, (eps.shape[0], D))
    r = reference_gaussian(q)
    vals = engine.eval_on_paths(_ddpm_integrand, (q.score_fn(sde), r.score_fn(sde)), x0, eps, t, alpha, sigma)
    # exact E‖s_r + ε/σ‖² − Dᾱ/σ² for r = N(m, c I): s_r + ε/σ = −α(x − m)/v + ε(1/σ − σ/v), v = α²c + σ²
    rm, rc = np.asarray(r.means[0]), float(r.eigvals[0, 0])
    v = alpha**2 * rc + sigma**2
    ref_term = alpha**2 * float(np.sum((np.asarray(x) - rm) ** 2)) / v**2 + D * (1 / sigma - sigma / v) ** 2 - D * alpha**2 / sigma**2
    xK = alpha[-1] * x + sigma[-1] * epsK
    logqK = engine.diffused_log_prob(q, jnp.asarray(alpha[-1]), jnp.asarray(sigma[-1] ** 2), xK)
    wk = (1.0 - a) / a
    return logqK - 0.5 * (vals @ jnp.asarray(wk)) - 0.5 * float(wk @ ref_term), logqK, float(abar[-1])


def check_ddpm_formula(q: GaussianMixture, x, *, K: int = 1000, beta_min: float = 1e-4, beta_max: float = 0.02,
                       seed: int = 0, n_samples: int = 256, noise: str = "auto") -> CheckResult:
    """L&Y DDPM form (THEORY.md §5.3): the DDPM sum S_K (K steps, linear β from ``beta_min`` to
    ``beta_max``) tends to the exact log q_0(x) as the schedule is refined.

    ``noise``: how the expectations over X_k | X_0 = x are taken.

    - ``"quadrature"`` (``"auto"`` for D ≤ 2): Gauss–Hermite in ε (:data:`DDPM_QUADRATURE_NODES` per
      dimension), so S_K is the DDPM sum itself, with no Monte-Carlo error. S_K − log q_0(x) is then the
      discretisation error, first order in 1/K: at the report's point +5.3e-3 nats at K = 1000,
      halving per doubling of K (ratio 0.5013 at K = 50, 0.4999 at K = 1000) (THEORY.md §8 item 22). The check refines the same schedule once
      (2K steps, β/2) and compares the Richardson value 2 S_2K − S_K with log q_0(x) to 1e-4·D (measured
      ≤ 1e-5 for K ≥ 500; its residual is second order, 2.8e-4 at K = 50: the tolerance is for K ≳ 200); S_K, its error and the error ratio per doubling are recorded.
    - ``"monte_carlo"`` (``"auto"`` for D > 2): ``n_samples`` draws of ε per step; S_K against
      log q_0(x) within 3 SE plus 2e-3·D for the discretisation (THEORY.md §5.3: 1e-3 at K = 1000, D = 1,
      Gaussian data; the mixture above needs 4e-3 per dimension, far inside its SE of ~0.07)."""
    x = jnp.asarray(x, dtype=jnp.float64)
    D = x.shape[0]
    if noise == "auto":
        noise = "quadrature" if D <= 2 else "monte_carlo"
    if noise not in ("quadrature", "monte_carlo"):
        raise ValueError(f"noise must be 'auto', 'quadrature' or 'monte_carlo'; got {noise!r}.")
    if noise == "quadrature" and D > 2:
        raise ValueError(f"noise='quadrature' takes a tensor-product rule in D = {D} dimensions "
                         f"({DDPM_QUADRATURE_NODES}^{D} nodes): use it for D <= 2, or noise='monte_carlo'.")
    exact = float(q.log_prob(x))
    settings = dict(D=D, K_steps=K, beta=(beta_min, beta_max), noise=noise)
    if noise == "quadrature":
        nodes, w = _gauss_hermite_noise(D, DDPM_QUADRATURE_NODES)
        nodes, w = jnp.asarray(nodes), jnp.asarray(w)
        (est_K, logqK, abar_K), (est_2K, _, _) = (
            _ddpm_terms(q, x, k, beta_min * f, beta_max * f, nodes, nodes) for k, f in ((K, 1.0), (2 * K, 0.5)))
        s_K, s_2K = float(w @ est_K), float(w @ est_2K)
        m, se = 2.0 * s_2K - s_K, 0.0
        value_n01 = s_K - float(w @ logqK) - 0.5 * D * math.log(2 * math.pi * math.e)  # S_K with the N(0, I) prior
        settings.update(ddpm_sum=s_K, ddpm_sum_error=s_K - exact, ddpm_sum_2K=s_2K,
                        error_ratio_per_doubling=(s_2K - exact) / (s_K - exact), n_nodes=int(w.shape[0]),
                        lhs="Richardson 2 S_2K - S_K")
        equation, atol = "DDPM sum S_K -> log q_0(x) like 1/K (Richardson 2 S_2K - S_K)", 1e-4 * D
    else:
        k1, k2 = jax.random.split(engine.key_from_seed(seed))
        eps = engine.path_noise(k1, n_samples, K, D)
        epsK = jax.random.normal(k2, (n_samples, D), dtype=jnp.float64)
        est, logqK, abar_K = _ddpm_terms(q, x, K, beta_min, beta_max, eps, epsK)
        m, se = engine.mc_mean(est)
        value_n01 = m - float(logqK.mean()) - 0.5 * D * math.log(2 * math.pi * math.e)
        settings.update(n_samples=n_samples, lhs="S_K")
        equation, atol = "Eq. 3.1c-type DDPM sum = log q_0(x)", 2e-3 * D
    settings.update(alphabar_K=abar_K, value_with_N01_prior=value_n01)
    return engine.identity("ly_ddpm_formula", PAPER, equation, m, exact, se, atol=atol, settings=settings)


def _mixture_moments(q: GaussianMixture):
    w = np.asarray(q.weights)
    mu = np.asarray(q.means)
    cov = np.asarray(q.covariances)
    mean = w @ mu
    c = np.einsum("k,kij->ij", w, cov) + np.einsum("k,ki,kj->ij", w, mu - mean, mu - mean)
    return mean, c


def check_elbo_minimiser(q: GaussianMixture, *, sde: SDE | None = None, bounds=None,
                         dvs=(0.2, 0.1, 0.05)) -> list[CheckResult]:
    """L&Y §4 ("the ELBO minimiser nearly coincides with the true NLL minimiser"; THEORY.md §5.4), exact.

    One-parameter model families s_θ(x, t) = −(x − α_t μ̄)/v̂_t, v̂_t = (α_t² θ + σ_t²)(1 + dv φ(t)),
    φ(t) = 4(t/T)(1 − t/T) (:class:`numerics.checks.affine.AffineModel`), mixture data q (in no family).
    The SDE model law p_θ,ε is Gaussian (closed form, :mod:`numerics.checks.affine`), so both objectives
    are exact functions of θ:

        NLL(θ)  = E_{q_ε}[−log p^SDE_θ,ε]            (true objective, from the mixture's moments)
        ELBO(θ) = E_{q_0}[L^DSM_θ(x)]  (Song+21 Thm 2 / L&Y's DSM objective over [ε, T], closed form)

    At dv = 0, s_θ is the exact score of the diffused N(μ̄, θI): Theorem 2 is tight for a model's own
    score, so ELBO − NLL does not depend on θ and the minimisers coincide by construction — a check of
    the two closed forms, not of L&Y's claim. At dv ≠ 0 the bound is not tight (ELBO − NLL varies with
    θ, recorded), the minimisers differ, and L&Y's claim is that they nearly coincide: the distance
    must shrink with dv, at least as fast as dv (measured: like dv², ratios 0.28–0.36 per halving).

    Returns (i) ELBO(θ) ≥ NLL(θ) at the ELBO minimiser for dv = ``dvs[0]`` (inequality, a strict gap);
    (ii) the minimisers at dv = 0 (identity, atol 1e-5·θ); (iii) the worst ratio of minimiser distances
    between successive ``dvs`` (each half the previous) against ½ (inequality). A minimiser that scipy
    does not report converged, or that lies on the bounds (default (0.01, 10)·tr Cov/D), is NaN, so the
    checks fail.
    """
    sde = LiYanSDE() if sde is None else sde
    mean, cov = _mixture_moments(q)
    D = q.dim
    e_t, T = float(sde.t_min), float(sde.T)
    a_e, v_e = float(sde.mean_coeff(jnp.asarray(e_t))), float(sde.variance(jnp.asarray(e_t)))
    mean_e, cov_e = a_e * mean, a_e**2 * cov + v_e * np.eye(D)
    S = float(np.trace(cov))
    bounds = (0.01 * S / D, 10.0 * S / D) if bounds is None else tuple(bounds)
    grid = engine.time_grid(sde, e_t, T, n_panels=16, order=16)
    tn = jnp.asarray(grid.t)
    al = np.asarray(sde.mean_coeff(tn))
    sg2 = np.asarray(sde.variance(tn))
    phi = 4.0 * (grid.t / T) * (1.0 - grid.t / T)
    aT, vT = float(sde.mean_coeff(jnp.asarray(T))), float(sde.variance(jnp.asarray(T)))
    # E_{x~q_0} −E[log π(X_T) | X_0 = x]: affine in ‖x‖², so evaluated at E‖x‖² = tr Cov + ‖mean‖²
    prior = float(prior_cross_entropy(sde, S + mean @ mean, D, coeffs=(aT, vT)))
    const = 0.5 * D * math.log(vT / v_e)

    def elbo(theta, dv):
        # E‖s_θ(x_t) + ε/σ_t‖² with x_t = α_t x_0 + σ_t ε: α_t² E‖x_0 − μ̄‖²/v̂² + D (1/σ_t − σ_t/v̂)²
        vh = (al**2 * theta + sg2) * (1.0 + dv * phi)
        integrand = al**2 * S / vh**2 + D * (1.0 / np.sqrt(sg2) - np.sqrt(sg2) / vh) ** 2
        return prior + 0.5 * float(grid.w_g2 @ integrand) - const

    def nll(theta, dv):
        model = AffineModel(jnp.asarray(mean), jnp.full((D,), theta), jnp.zeros(D), jnp.full((D,), dv))
        s = affine_summary(mean, np.full(D, theta), model, sde, n_panels=2, order=4)
        mu_p, w_p = s.sde_law
        # E_{q_ε}[−log N(x; μ_p, diag w_p)]
        return float(0.5 * np.sum((np.diag(cov_e) + (mean_e - mu_p) ** 2) / w_p + np.log(2 * np.pi * w_p)))

    def argmin(f, dv):
        res = optimize.minimize_scalar(lambda th: f(th, dv), bounds=bounds, method="bounded",
                                       options=dict(xatol=1e-9 * bounds[1]))
        lo, hi = bounds
        interior = lo + 1e-6 * (hi - lo) < res.x < hi - 1e-6 * (hi - lo)
        return float(res.x) if res.success and interior else math.nan

    minimisers = {dv: (argmin(elbo, dv), argmin(nll, dv)) for dv in (0.0, *dvs)}
    distance = {dv: abs(e - n) for dv, (e, n) in minimisers.items()}
    ratios = [distance[b] / distance[a] if distance[a] > 0 else math.nan for a, b in zip(dvs[:-1], dvs[1:])]
    th_e, th_n = minimisers[0.0]
    dv1 = dvs[0]
    th1 = minimisers[dv1][0]
    gap_over_theta = {th: elbo(th, dv1) - nll(th, dv1) for th in (0.5 * S / D, S / D, 2.0 * S / D)}
    common = dict(D=D, K=q.n_components, sde=type(sde).__name__, bounds=bounds, moment_match=S / D)
    return [
        engine.inequality("ly_elbo_ge_nll", PAPER + " / Song+21", f"NLL(theta) <= ELBO(theta) at theta_ELBO (dv={dv1:g})",
                          nll(th1, dv1), elbo(th1, dv1), 0.0, atol=1e-8,
                          settings=dict(common, theta=th1, dv=dv1, elbo_minus_nll_at_theta=gap_over_theta)),
        engine.identity("ly_elbo_minimiser_tight", PAPER, "argmin ELBO = argmin NLL where Thm 2 is tight (dv=0)",
                        th_e, th_n, 0.0, atol=1e-5 * S / D,
                        settings=dict(common, theta_elbo=th_e, theta_nll=th_n, elbo_at_min=elbo(th_e, 0.0),
                                      nll_at_min=nll(th_n, 0.0))),
        engine.inequality("ly_elbo_minimiser", PAPER, "argmin ELBO -> argmin NLL as dv -> 0: distance ratio per "
                          "halving of dv <= 1/2", max(ratios) if all(map(math.isfinite, ratios)) else math.nan, 0.5,
                          0.0, settings=dict(common, dvs=list(dvs), ratios=ratios,
                                             minimisers={dv: list(m) for dv, m in minimisers.items()},
                                             nll_cost_of_elbo_minimiser={dv: nll(e, dv) - nll(n, dv)
                                                                         for dv, (e, n) in minimisers.items()})),
    ]
