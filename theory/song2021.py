"""Song, Durkan, Murray & Ermon 2021, *Maximum Likelihood Training of Score-Based Diffusion Models*
(NeurIPS 2021, arXiv 2101.09258), derived with sympy.

* Likelihood weighting λ(t) = g(t)² (their Eq. 8 / Theorem 1).
* Importance sampling of t (their §5): p(t) ∝ g²/σ_t²; normaliser, CDF and inverse CDF derived by
  integrating on the SDE's clock and solving (THEORY.md §2.6).
* Gaussian data N(μ, s²) per dimension (diagonal d-D data is a sum over dimensions): the marginal
  q_t (by the convolution integral), its exact score, entropy, Fisher information, KL(q_T ‖ π),
  the DSM − SM constant = J_DSM(exact score; g²) (THEORY.md Eq. 2.2), Theorem 2's bound with the exact
  score (equal to −log q_ε(x) when π = q_T: tightness), and Theorem 1's two sides for the SDE model
  with the exact score (backward moment ODEs solved by ``dsolve``).

Generic linear-SDE formulas are written through F = log α and G = σ²/α² = 1/SNR (sde.py): then
g² dt = α² dG, and the Gaussian integrals over t become elementary integrals in G.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import sympy as sp

from theory import sde as _sde
from theory._sym import gaussian_expectation, is_zero, lambdify

__all__ = [
    "likelihood_weighting",
    "importance",
    "gaussian_marginal",
    "gaussian_closed_forms",
    "dsm_constant",
    "theorem2_bound",
    "theorem1_sde_kl",
    "identities",
    "check_identities",
    "functions",
]

x, mu, y = sp.symbols("x mu y", real=True)
s2 = sp.Symbol("s2", positive=True)  # data variance per dimension
alpha, sigma2 = sp.symbols("alpha sigma2", positive=True)  # kernel at one time
eps, T, u = sp.symbols("epsilon T u", positive=True)
G, Ge, GT = sp.symbols("G G_eps G_T", positive=True)  # 1/SNR at t, ε, T
Fe, FT = sp.symbols("F_eps F_T", real=True)  # log α at ε, T
m_pi = sp.Symbol("m_pi", real=True)
v_pi = sp.Symbol("v_pi", positive=True)
_w = sp.Symbol("w", positive=True)
_yv = sp.Symbol("yv", real=True)


def _normal_pdf(z, m, v):
    return sp.exp(-((z - m) ** 2) / (2 * v)) / sp.sqrt(2 * sp.pi * v)


def _normal_logpdf(z, m, v):
    return -((z - m) ** 2) / (2 * v) - sp.log(2 * sp.pi * v) / 2


def likelihood_weighting(name: str) -> sp.Expr:
    """λ(t) = g(t)² (Song et al. 2021, Theorem 1)."""
    return _sde.kernel(name).g2


# --- importance sampling of t (Song et al. 2021 §5; THEORY.md §2.6) ---------------------------


@functools.cache
def importance(name: str) -> dict[str, sp.Expr]:
    """Density p(t) ∝ g²/σ² on [ε, T]: ``density`` (unnormalised, in t), ``antiderivative`` A(t),
    ``normaliser`` Z(ε, T), ``cdf`` (in t, ε, T), and ``inverse_cdf`` (in u, ε, T) where a closed
    form was found (None otherwise — then invert ``cdf`` numerically).

    A is obtained by integrating g²_c/σ²_c over the clock c (for exponential clocks in w = e^c,
    where the integrand is rational); the inverse by solving exp(A(w)) = exp(y) for w, then the
    clock c(t) = log w for t.
    """
    s, k = _sde.spec(name), _sde.kernel(name)
    c = _sde.c
    dens_c = s.g2_c / (sp.exp(2 * k.F_c) * k.G_c)  # g²/σ² per unit clock
    if k.G_c.has(sp.exp(c)) and not k.G_c.has(sp.exp(-c)) or name == "subvp":
        dens_w = sp.cancel(sp.powsimp(sp.expand(dens_c.subs(c, sp.log(_w)) / _w), force=True))
        A_w = sp.integrate(sp.apart(dens_w, _w), _w)
        A_c = A_w.subs(_w, sp.exp(c))
        roots = sp.solve(sp.Eq(sp.exp(A_w), sp.exp(_yv)), _w)
        c_of_y = _pick_root([sp.log(r) for r in roots], A_c, c, s)
        if c_of_y is not None:
            c_of_y = sp.expand_log(c_of_y, force=True)
    else:
        A_c = sp.integrate(sp.powsimp(sp.expand(dens_c), force=True), c)
        sols = sp.solve(sp.Eq(A_c, _yv), c)
        c_of_y = _pick_root(sols, A_c, c, s)
    A = A_c.subs(c, s.clock)
    Z = A.subs(t_, T) - A.subs(t_, eps)
    cdf = (A - A.subs(t_, eps)) / Z
    inverse = None
    if c_of_y is not None:
        c_star = c_of_y.subs(_yv, A.subs(t_, eps) + u * Z)
        t_roots = sp.solve(sp.Eq(s.clock, _sde.c), t_)
        t_of_c = _pick_t_root(t_roots, s)
        if t_of_c is not None:
            inverse = t_of_c.subs(_sde.c, c_star)
        else:
            t_of_c = None
    else:
        t_of_c = None
    density = s.g2 / k.sigma2
    return {
        "density": density,
        "antiderivative": A,
        "antiderivative_clock": A_c,
        "clock_of_y": c_of_y,  # solves A_c(c) = y
        "t_of_clock": t_of_c,  # solves c(t) = c
        "normaliser": Z,
        "cdf": cdf,
        "inverse_cdf": inverse,
    }


t_ = _sde.t


def _defaults(s) -> dict:
    return dict(s.defaults)


def _pick_root(cands, A_c, c, s):
    """The root c(y) with A(c(y)) = y at a few sample points (real branch)."""
    for cand in cands:
        ok = True
        for c0 in (sp.Rational(1, 3), sp.Integer(2)):
            yv = A_c.subs(c, c0).subs(_defaults(s))
            val = sp.N(cand.subs(_yv, yv).subs(_defaults(s)), 30)
            if not (val.is_real and abs(val - c0) < 1e-20):
                ok = False
                break
        if ok:
            return cand
    return None


def _pick_t_root(cands, s):
    for cand in cands:
        ok = True
        for t0 in (sp.Rational(1, 7), sp.Rational(3, 5)):
            c0 = s.clock.subs(t_, t0).subs(_defaults(s))
            val = sp.N(cand.subs(_sde.c, c0).subs(_defaults(s)), 30)
            if not (val.is_real and abs(val - t0) < 1e-20):
                ok = False
                break
        if ok:
            return cand
    return None


# --- Gaussian data ----------------------------------------------------------------------------


@functools.cache
def _gaussian_integral() -> tuple[sp.Expr, tuple[sp.Symbol, sp.Symbol, sp.Symbol]]:
    """∫ exp(−a z² + b z + k) dz over R, a > 0 (sympy)."""
    z = sp.Symbol("z", real=True)
    a, b, k = sp.Symbol("a", positive=True), sp.Symbol("b", real=True), sp.Symbol("k", real=True)
    return sp.integrate(sp.exp(-a * z**2 + b * z + k), (z, -sp.oo, sp.oo), conds="none"), (a, b, k)


@functools.cache
def gaussian_marginal() -> sp.Expr:
    """q_t(x) = ∫ N(x_0; μ, s²) N(x; α x_0, σ²) dx_0 (1-D; per dimension for diagonal data): the
    exponent is a quadratic in x_0, whose coefficients are read off and fed to the Gaussian integral."""
    x0 = sp.Symbol("x0", real=True)
    expo = sp.expand(sp.expand_log(sp.log(_normal_pdf(x0, mu, s2) * _normal_pdf(x, alpha * x0, sigma2)), force=True))
    poly = sp.Poly(expo, x0)
    integral, (a, b, k) = _gaussian_integral()
    q = integral.subs({a: -poly.coeff_monomial(x0**2), b: poly.coeff_monomial(x0), k: poly.coeff_monomial(1)})
    return sp.factor(sp.powsimp(q, force=True))


@functools.cache
def gaussian_closed_forms() -> dict[str, sp.Expr]:
    """Closed forms at one t in terms of (α, σ²): marginal mean/variance, score, Hessian, entropy,
    Fisher information, and KL(q ‖ N(m_π, v_π)). All derived from :func:`gaussian_marginal`."""
    q = gaussian_marginal()
    logq = sp.expand(sp.expand_log(sp.log(q), force=True))
    score = sp.simplify(sp.diff(logq, x))
    hess = sp.simplify(sp.diff(score, x))
    mean = sp.solve(score, x)[0]  # the mode = mean of a Gaussian
    var = sp.simplify(-1 / hess)
    entropy = sp.simplify(gaussian_expectation(-logq, x, mean, var))
    fisher = sp.simplify(gaussian_expectation(score**2, x, mean, var))
    kl = sp.expand(sp.expand_log(gaussian_expectation(logq - _normal_logpdf(x, m_pi, v_pi), x, mean, var), force=True))
    return {
        "log_prob": logq,
        "mean": mean,
        "var": var,
        "score": score,
        "hessian": hess,
        "entropy": entropy,
        "fisher": fisher,
        "kl_to_prior": kl,
    }


@functools.cache
def dsm_constant() -> dict[str, sp.Expr]:
    """J_DSM(θ; g²) − J_SM(θ; g²) = ½∫_ε^T g² (1/σ_t² − J(q_t)) dt per dimension (THEORY.md Eq. 2.2);
    equal to J_DSM at the exact score. With g² dt = α² dG, σ² = α² G and v = α²(s² + G) the
    integrand is (1/G − 1/(s² + G)) dG. Returns the ``integrand_G`` and ``value`` in (G_ε, G_T, s²)
    and ``value_snr`` = ½ log((1 + s² SNR_ε)/(1 + s² SNR_T))."""
    cf = gaussian_closed_forms()
    integrand = (1 / sigma2 - cf["fisher"]).subs({sigma2: alpha**2 * G}) * alpha**2  # per dG
    integrand = sp.simplify(integrand)
    value = sp.simplify(sp.integrate(integrand, (G, Ge, GT)) / 2)
    snr_e, snr_T = sp.symbols("snr_eps snr_T", positive=True)
    value_snr = sp.log((1 + s2 * snr_e) / (1 + s2 * snr_T)) / 2
    return {"integrand_G": integrand, "value": value, "value_snr": value_snr, "snr_symbols": (snr_e, snr_T)}


@functools.cache
def theorem2_bound() -> dict[str, sp.Expr]:
    """Theorem 2 (SM form, exact score s = ∇log q_t) over [ε, T], conditioned on X_ε = x, with the
    prior π = N(m_π, v_π) (per dimension):

        L(x) = −E[log π(X_T) | X_ε = x] + ½∫_ε^T E[g²(2 s' + s²) − 2 f | X_ε = x] dt.

    X_t | X_ε = x ~ N(e^{F−F_ε} x, e^{2F}(G − G_ε)); the time integral becomes one in G.
    Returns ``bound`` (in x, μ, s², F_ε, G_ε, F_T, G_T, m_π, v_π), ``neg_log_q_eps`` and the
    exact ``gap`` E[log q_T(X_T) − log π(X_T) | X_ε = x] so that bound = −log q_ε(x) + gap.
    """
    F = sp.Symbol("F", real=True)
    cf = gaussian_closed_forms()
    a_t, var_t = sp.exp(F), sp.exp(2 * F) * G
    score = cf["score"].subs({alpha: a_t, sigma2: var_t}, simultaneous=True)
    div = sp.diff(score, x)
    cond_mean, cond_var = sp.exp(F - Fe) * x, sp.exp(2 * F) * (G - Ge)
    inner = gaussian_expectation((2 * div + score**2).subs(x, _yv), _yv, cond_mean, cond_var)
    per_dG = sp.simplify(sp.exp(2 * F) * inner)  # g² dt = e^{2F} dG
    if per_dG.has(F):
        raise AssertionError("Theorem 2 integrand should not depend on F after g² dt = α² dG")
    integral_G = sp.integrate(per_dG, (G, Ge, GT))
    XT_mean, XT_var = sp.exp(FT - Fe) * x, sp.exp(2 * FT) * (GT - Ge)
    e_log_pi = gaussian_expectation(_normal_logpdf(_yv, m_pi, v_pi), _yv, XT_mean, XT_var)
    bound = -e_log_pi + integral_G / 2 - (FT - Fe)  # ½∫ −2f dt = −(F_T − F_ε)
    q_e = cf["log_prob"].subs({alpha: sp.exp(Fe), sigma2: sp.exp(2 * Fe) * Ge}, simultaneous=True)
    q_T = cf["log_prob"].subs({alpha: sp.exp(FT), sigma2: sp.exp(2 * FT) * GT}, simultaneous=True)
    gap = gaussian_expectation((q_T - _normal_logpdf(x, m_pi, v_pi)).subs(x, _yv), _yv, XT_mean, XT_var)
    prior_exact = {m_pi: sp.exp(FT) * mu, v_pi: sp.exp(2 * FT) * (s2 + GT)}
    return {"bound": bound, "neg_log_q_eps": -q_e, "gap": gap, "prior_is_q_T": prior_exact, "integrand_G": per_dG}


@functools.cache
def theorem1_sde_kl() -> dict[str, sp.Expr]:
    """Theorem 1 with the exact score: the reverse-SDE model started from π = N(m_π, v_π) at T has
    Gaussian marginals N(e^F M, e^{2F} W) with dM/dG = (M − μ)/(s² + G), dW/dG = 2W/(s² + G) − 1
    (THEORY.md §2.3 written in the G clock), solved with ``dsolve``. Returns ``kl_eps`` =
    KL(q_ε ‖ p_ε^SDE) and ``kl_T`` = KL(q_T ‖ π) (the bound, as J_SM = 0); both vanish when π = q_T.
    """
    Mf, Wf = sp.Function("M"), sp.Function("W")
    C1 = sp.Symbol("C1")
    M_T, W_T = sp.exp(-FT) * m_pi, sp.exp(-2 * FT) * v_pi
    solM = sp.dsolve(sp.Eq(Mf(G).diff(G), (Mf(G) - mu) / (s2 + G))).rhs
    solW = sp.dsolve(sp.Eq(Wf(G).diff(G), 2 * Wf(G) / (s2 + G) - 1)).rhs
    cM = sp.solve(sp.Eq(solM.subs(G, GT), M_T), C1)[0]
    cW = sp.solve(sp.Eq(solW.subs(G, GT), W_T), C1)[0]
    M_e = solM.subs(C1, cM).subs(G, Ge)
    W_e = solW.subs(C1, cW).subs(G, Ge)
    cf = gaussian_closed_forms()
    kl_e = cf["kl_to_prior"].subs({m_pi: sp.exp(Fe) * M_e, v_pi: sp.exp(2 * Fe) * W_e}, simultaneous=True)
    kl_e = kl_e.subs({alpha: sp.exp(Fe), sigma2: sp.exp(2 * Fe) * Ge}, simultaneous=True)
    kl_T = cf["kl_to_prior"].subs({alpha: sp.exp(FT), sigma2: sp.exp(2 * FT) * GT}, simultaneous=True)
    return {"kl_eps": kl_e, "kl_T": kl_T, "M_eps": M_e, "W_eps": W_e}


# --- identities -------------------------------------------------------------------------------


@functools.cache
def identities() -> dict[str, sp.Expr]:
    """Expressions that must be exactly 0."""
    out: dict[str, sp.Expr] = {}
    cf = gaussian_closed_forms()
    v = alpha**2 * s2 + sigma2
    out["gaussian/marginal_is_normal"] = sp.expand(
        sp.expand_log(sp.log(gaussian_marginal()) - _normal_logpdf(x, alpha * mu, v), force=True)
    )
    out["gaussian/score"] = cf["score"] + (x - alpha * mu) / v
    out["gaussian/entropy"] = cf["entropy"] - sp.log(2 * sp.pi * sp.E * v) / 2
    out["gaussian/fisher_is_minus_mean_hessian"] = cf["fisher"] + cf["hessian"]
    # Eq. 2.2 constant: integrand in t equals d/dt log(G/(s² + G)) for any linear SDE.
    gk = _sde.generic_kernel()
    Gf = sp.exp(-gk["log_snr"])
    alpha_t, sigma2_t = gk["alpha"], gk["sigma2"]
    fisher_t = cf["fisher"].subs({alpha: alpha_t, sigma2: sigma2_t}, simultaneous=True)
    out["dsm_constant/integrand_is_exact_derivative"] = gk["g2"] * (1 / sigma2_t - fisher_t) - sp.diff(
        sp.log(Gf / (s2 + Gf)), _sde.t
    )
    d = dsm_constant()
    snr_e, snr_T = d["snr_symbols"]
    out["dsm_constant/snr_form"] = sp.exp(2 * d["value"]) - sp.exp(2 * d["value_snr"]).subs(
        {snr_e: 1 / Ge, snr_T: 1 / GT}
    )
    # Theorem 2: tight (bound = −log q_ε) at π = q_T, and bound = −log q_ε + gap for any π.
    th = theorem2_bound()
    out["theorem2/tight_at_exact_score_and_prior"] = (th["bound"] - th["neg_log_q_eps"]).subs(th["prior_is_q_T"])
    out["theorem2/gap_is_conditional_log_ratio"] = th["bound"] - th["neg_log_q_eps"] - th["gap"]
    # Theorem 1 with the exact score: both sides vanish at π = q_T.
    t1 = theorem1_sde_kl()
    out["theorem1/kl_eps_zero_at_exact_prior"] = t1["kl_eps"].subs(th["prior_is_q_T"])
    out["theorem1/kl_T_zero_at_exact_prior"] = t1["kl_T"].subs(th["prior_is_q_T"])
    # IS: density = d(antiderivative)/dt; CDF(inverse(u)) = u.
    for name in ("vp", "subvp", "ve_exact", "ve_score_sde", "logsnr_linear", "li_yan"):
        imp = importance(name)
        out[f"importance/{name}/antiderivative"] = sp.diff(imp["antiderivative"], _sde.t) - imp["density"]
        # inverse CDF = t_of_clock ∘ clock_of_y: both solve their equation exactly.
        if imp["clock_of_y"] is not None:
            A_at = imp["antiderivative_clock"].subs(_sde.c, imp["clock_of_y"])
            out[f"importance/{name}/clock_of_y_solves"] = sp.exp(A_at) - sp.exp(_yv)
        if imp["t_of_clock"] is not None:
            out[f"importance/{name}/t_of_clock_solves"] = _sde.spec(name).clock.subs(_sde.t, imp["t_of_clock"]) - _sde.c
    return out


def check_identities() -> dict[str, bool]:
    return {k: is_zero(v) for k, v in identities().items()}


# --- lambdified functions -----------------------------------------------------------------------


@functools.cache
def functions(name: str, module: str = "numpy") -> dict[str, Callable]:
    """Lambdified closed forms for SDE ``name`` (params as in ``sde.spec(name).params``):

    * ``importance_cdf(t, eps, T, *params)``, ``importance_normaliser(eps, T, *params)``,
      ``importance_inverse_cdf(u, eps, T, *params)`` (absent where no closed form).
    * per-dimension Gaussian-data quantities — sum over dimensions for diagonal d-D data:
      ``dsm_constant(s2, eps, T, *params)``, ``kl_prior(mu, s2, T, *params)`` (π = the SDE prior),
      ``entropy(s2, t, *params)``, ``score(x, mu, s2, t, *params)``,
      ``theorem2_bound(x, mu, s2, eps, T, m_pi, v_pi, *params)``,
      ``neg_log_q(x, mu, s2, t, *params)``, ``theorem1_kl_eps(mu, s2, eps, T, m_pi, v_pi, *params)``.
    """
    s = _sde.spec(name)
    p = s.params
    tt = _sde.t
    imp = importance(name)
    A = lambdify((tt, *p), imp["antiderivative"], module)
    out = {
        "importance_cdf": lambda t_, e, T_, *p_: (A(t_, *p_) - A(e, *p_)) / (A(T_, *p_) - A(e, *p_)),
        "importance_normaliser": lambda e, T_, *p_: A(T_, *p_) - A(e, *p_),
    }
    if imp["inverse_cdf"] is not None:
        c_of_y = lambdify((_yv, *p), imp["clock_of_y"], module)
        t_of_c = lambdify((_sde.c, *p), imp["t_of_clock"], module)

        def inverse_cdf(u_, e, T_, *p_):
            a_e = A(e, *p_)
            return t_of_c(c_of_y(a_e + u_ * (A(T_, *p_) - a_e), *p_), *p_)

        out["importance_inverse_cdf"] = inverse_cdf
    kf = _sde.functions(name, module)
    F_of, G_of = kf["F"], kf["G"]

    def _kern(e, T_, *p_):
        return F_of(e, *p_), G_of(e, *p_), F_of(T_, *p_), G_of(T_, *p_)

    dsm = lambdify((Ge, GT, s2), dsm_constant()["value"], module, rewrite=False)
    out["dsm_constant"] = lambda s2_, e, T_, *p_: dsm(G_of(e, *p_), G_of(T_, *p_), s2_)
    cf = gaussian_closed_forms()
    a_of, v_of = kf["alpha"], kf["sigma2"]
    kl = lambdify((alpha, sigma2, mu, s2, m_pi, v_pi), cf["kl_to_prior"], module, rewrite=False)
    out["kl_gaussian"] = kl  # KL(N(αμ, α²s² + σ²) ‖ N(m_π, v_π)) at given (α, σ²)
    prior_var = float(s.prior_var) if s.prior_var.is_number else None
    pv = lambdify(p, s.prior_var, module)
    out["kl_prior"] = lambda mu_, s2_, T_, *p_: kl(a_of(T_, *p_), v_of(T_, *p_), mu_, s2_, 0.0, pv(*p_))
    ent = lambdify((alpha, sigma2, s2), cf["entropy"], module, rewrite=False)
    out["entropy"] = lambda s2_, t_, *p_: ent(a_of(t_, *p_), v_of(t_, *p_), s2_)
    sc = lambdify((x, alpha, sigma2, mu, s2), cf["score"], module, rewrite=False)
    out["score"] = lambda x_, mu_, s2_, t_, *p_: sc(x_, a_of(t_, *p_), v_of(t_, *p_), mu_, s2_)
    nlq = lambdify((x, alpha, sigma2, mu, s2), -cf["log_prob"], module, rewrite=False)
    out["neg_log_q"] = lambda x_, mu_, s2_, t_, *p_: nlq(x_, a_of(t_, *p_), v_of(t_, *p_), mu_, s2_)
    del prior_var
    th2 = lambdify((x, mu, s2, Fe, Ge, FT, GT, m_pi, v_pi), theorem2_bound()["bound"], module, rewrite=False)
    out["theorem2_bound"] = lambda x_, mu_, s2_, e, T_, mp, vp, *p_: th2(x_, mu_, s2_, *_kern(e, T_, *p_), mp, vp)
    th1 = lambdify((mu, s2, Fe, Ge, FT, GT, m_pi, v_pi), theorem1_sde_kl()["kl_eps"], module, rewrite=False)
    out["theorem1_kl_eps"] = lambda mu_, s2_, e, T_, mp, vp, *p_: th1(mu_, s2_, *_kern(e, T_, *p_), mp, vp)
    return out
