"""theory/: every derived identity is an exact sympy zero; the derived closed forms agree with
numerics (kernels, IS, Gaussian closed forms vs Monte Carlo within 3 SE, ODE likelihood within 1e-6)
and with the independent reference numbers of THEORY.md."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate

import numerics
from theory import _sym, affine, li_yan2024, lu2022, sde, song2021, targets, vdm

TARGETS = targets.load()


# --- exact identities --------------------------------------------------------------------------
@pytest.mark.parametrize("module", [sde, song2021, vdm, lu2022, li_yan2024, affine], ids=lambda m: m.__name__)
def test_identities_simplify_to_zero(module):
    results = module.check_identities()
    assert len(results) >= 4
    assert [k for k, ok in results.items() if not ok] == []


def test_normal_moments_mgf_equal_integration():
    for k in (2, 3, 4):
        assert _sym.normal_moment(k) == _sym.normal_moment_by_integration(k)


# --- kernels vs numerics -------------------------------------------------------------------------
def _numerics_sde(name, p):
    if name == "vp":
        return numerics.VPSDE(*p)
    if name == "subvp":
        return numerics.SubVPSDE(*p, t_min=1e-5)
    if name == "ve_exact":
        return numerics.VESDE(*p, kernel="exact")
    if name == "ve_score_sde":
        return numerics.VESDE(*p, kernel="score_sde")
    if name == "logsnr_linear":
        return numerics.LogSNRSDE(numerics.LinearGamma(*p))
    if name == "logsnr_cosine":
        return numerics.LogSNRSDE(numerics.CosineGamma(*p))
    raise KeyError(name)


NUMERIC_SDES = ["vp", "subvp", "ve_exact", "ve_score_sde", "logsnr_linear", "logsnr_cosine"]


@pytest.mark.parametrize("name", NUMERIC_SDES)
def test_targets_kernel_match_numerics(name):
    rec = TARGETS["sde"][name]
    p = tuple(rec["params"][str(s)] for s in sde.spec(name).params)
    n = _numerics_sde(name, p)
    for ts, row in rec["t"].items():
        tt = float(ts) if "/" not in ts else int(ts.split("/")[0]) / int(ts.split("/")[1])
        np.testing.assert_allclose(float(n.mean_coeff(tt)), row["alpha"], rtol=1e-11)
        np.testing.assert_allclose(float(n.variance(tt)), row["sigma2"], rtol=1e-10)
        np.testing.assert_allclose(float(n.log_snr(tt)), row["log_snr"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(n.log_snr_derivative(tt)), row["d_log_snr"], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(float(n.diffusion_sq(tt)), row["g2"], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(float(n.drift_coeff(tt)), row["f"], rtol=1e-10, atol=1e-12)


@given(
    name=st.sampled_from(["vp", "subvp", "ve_exact", "logsnr_linear"]),
    tt=st.floats(1e-4, 1.0),
    a=st.floats(0.05, 1.0),
    b=st.floats(2.0, 30.0),
)
def test_lambdified_kernel_match_numerics(name, tt, a, b):
    p = {"vp": (a, b), "subvp": (a, b), "ve_exact": (a / 10, b), "logsnr_linear": (-10 - a, b / 5)}[name]
    fn = sde.functions(name)
    n = _numerics_sde(name, p)
    np.testing.assert_allclose(fn["alpha"](tt, *p), float(n.mean_coeff(tt)), rtol=1e-10)
    np.testing.assert_allclose(fn["sigma2"](tt, *p), float(n.variance(tt)), rtol=1e-9)
    np.testing.assert_allclose(fn["log_snr"](tt, *p), float(n.log_snr(tt)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(fn["g2"](tt, *p), float(n.diffusion_sq(tt)), rtol=1e-9)
    np.testing.assert_allclose(-fn["g2"](tt, *p) / fn["sigma2"](tt, *p), fn["d_log_snr"](tt, *p), rtol=1e-9)


def test_jax_lambdify_matches_numpy():
    f_np, f_jax = sde.functions("vp", "numpy"), sde.functions("vp", "jax")
    tt = jnp.linspace(1e-5, 1.0, 7)
    np.testing.assert_allclose(np.asarray(f_jax["log_snr"](tt, 0.1, 20.0)), f_np["log_snr"](np.asarray(tt), 0.1, 20.0), rtol=1e-13)


def test_reference_log_snr_values():
    """THEORY.md §1.2 reference table."""
    f = sde.functions("vp")
    assert f["log_snr"](1e-5, 0.1, 20.0) == pytest.approx(13.81451555215112, rel=1e-12)
    assert f["log_snr"](1.0, 0.1, 20.0) == pytest.approx(-10.04995681331841, rel=1e-12)
    assert f["alpha"](1.0, 0.1, 20.0) == pytest.approx(0.006571586494929615, rel=1e-12)
    g = song2021.functions("subvp")
    assert g["importance_normaliser"](1e-2, 1.0, 0.1, 20.0) == pytest.approx(22.48413575224870, rel=1e-12)
    assert song2021.functions("ve_exact")["importance_normaliser"](1e-5, 1.0, 0.01, 50.0) == pytest.approx(
        25.71199260516427, rel=1e-12
    )


# --- importance sampling ---------------------------------------------------------------------------
IS_CASES = [("vp", (0.1, 20.0), 1e-5), ("subvp", (0.1, 20.0), 1e-2), ("ve_exact", (0.01, 50.0), 1e-5), ("logsnr_linear", (-13.3, 5.0), 1e-5)]


@pytest.mark.parametrize("name,p,e", IS_CASES)
def test_importance_cdf_vs_quadrature_and_numerics(name, p, e):
    fs, fk = song2021.functions(name), sde.functions(name)
    dens = lambda s: fk["g2"](s, *p) / fk["sigma2"](s, *p)  # noqa: E731
    Z = fs["importance_normaliser"](e, 1.0, *p)
    Zq = integrate.quad(dens, e, 1.0, points=[10 * e, 100 * e], limit=200, epsabs=0, epsrel=1e-12)[0]
    assert Z == pytest.approx(Zq, rel=1e-9)
    n = _numerics_sde(name, p)
    for tt in (3 * e, 0.05, 0.4, 0.9):
        cq = integrate.quad(dens, e, tt, points=[min(10 * e, tt)], limit=200, epsabs=0, epsrel=1e-12)[0] / Zq
        assert fs["importance_cdf"](tt, e, 1.0, *p) == pytest.approx(cq, rel=1e-8)
        assert fs["importance_cdf"](tt, e, 1.0, *p) == pytest.approx(float(n.importance_cdf(tt, e)), rel=1e-9)
        assert float(n.importance_pdf(tt, e)) == pytest.approx(dens(tt) / Zq, rel=1e-9)
    u = np.array([1e-9, 1e-3, 0.1, 0.5, 0.9, 1 - 1e-9])
    t_inv = fs["importance_inverse_cdf"](u, e, 1.0, *p)
    np.testing.assert_allclose(fs["importance_cdf"](t_inv, e, 1.0, *p), u, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(t_inv, np.asarray(n.importance_inverse_cdf(jnp.asarray(u), e)), rtol=1e-8)


@pytest.mark.parametrize("key", sorted(k for k in TARGETS["importance"] if "inverse_cdf" in TARGETS["importance"][k]))
def test_targets_importance_vs_numerics(key):
    name, es = key.split("/eps=")
    rec = TARGETS["importance"][key]
    p = tuple(TARGETS["sde"][name]["params"][str(s)] for s in sde.spec(name).params)
    n = _numerics_sde(name, p)
    e = float(es)
    assert float(n.importance_normaliser(e)) == pytest.approx(rec["normaliser"], rel=1e-10)
    for us, tv in rec["inverse_cdf"].items():
        uu = int(us.split("/")[0]) / int(us.split("/")[1])
        assert float(n.importance_inverse_cdf(uu, e)) == pytest.approx(tv, rel=1e-9)


# --- Gaussian data closed forms ---------------------------------------------------------------------
def test_reference_values_gaussian():
    """THEORY.md §2.5 / §6.1 reference numbers, reproduced by the derived closed forms."""
    g = TARGETS["gaussian"]
    assert g["vp"]["dsm_constant/eps=1e-3"] == pytest.approx(3.641764240482726, rel=1e-13)
    assert g["vp"]["dsm_constant/eps=1e-5"] == pytest.approx(5.990966717305365, rel=1e-13)
    assert g["subvp"]["dsm_constant/eps=1e-3"] == pytest.approx(8.199190691217364, rel=1e-13)
    assert g["subvp"]["dsm_constant/eps=1e-5"] == pytest.approx(12.89822186563119, rel=1e-13)
    assert g["ve_exact"]["dsm_constant/eps=1e-3"] == pytest.approx(5.720848806897441, rel=1e-13)
    assert g["ve_exact"]["dsm_constant/eps=1e-5"] == pytest.approx(8.027650639539501, rel=1e-13)
    assert g["vp"]["kl_prior/T=1"] == pytest.approx(1.05808375153139e-5, rel=1e-11)
    assert g["subvp"]["kl_prior/T=1"] == pytest.approx(1.058208707285921e-5, rel=1e-11)
    assert g["ve_exact"]["kl_prior/T=1"] == pytest.approx(9.800102267679329e-5, rel=1e-11)


@pytest.mark.parametrize("name,p,e", [("vp", (0.1, 20.0), 1e-3), ("subvp", (0.1, 20.0), 1e-2)])
def test_dsm_constant_vs_numerics_monte_carlo(name, p, e):
    """J_DSM(exact score; g²) over [ε, 1] for diagonal 2-D Gaussian data = Σ_d closed form (3 SE)."""
    mu, s2 = np.array([0.7, -0.4]), np.array([0.16, 0.9])
    n = _numerics_sde(name, p)
    n = type(n)(*p, t_min=e)
    mix = numerics.GaussianMixture.from_diagonal([1.0], mu[None], s2[None])
    x0 = mix.sample(jax.random.PRNGKey(0), 20000)
    vals = np.asarray(numerics.dsm_loss(mix.score_fn(n), n, x0, jax.random.PRNGKey(1), weighting="g2_is"))
    exact = sum(song2021.functions(name)["dsm_constant"](s, e, 1.0, *p) for s in s2)
    se = vals.std(ddof=1) / math.sqrt(vals.size)
    assert abs(vals.mean() - exact) < 3 * se, (vals.mean(), exact, se)
    assert se < 0.02 * exact


def test_entropy_kl_score_vs_numerics():
    f = song2021.functions("vp")
    n = numerics.VPSDE(0.1, 20.0)
    mix = numerics.GaussianMixture.from_diagonal([1.0], [[0.7]], [[0.16]])
    for tt in (1e-3, 0.3, 1.0):
        qt = mix.diffuse(n, tt)
        xs = jnp.linspace(-2, 2, 5)[:, None]
        np.testing.assert_allclose(np.asarray(qt.score(xs))[:, 0], f["score"](np.asarray(xs[:, 0]), 0.7, 0.16, tt, 0.1, 20.0), rtol=1e-10)
        np.testing.assert_allclose(-np.asarray(qt.log_prob(xs)), f["neg_log_q"](np.asarray(xs[:, 0]), 0.7, 0.16, tt, 0.1, 20.0), rtol=1e-11)
        # entropy vs Monte Carlo of −log q_t with numerics samples
        y = qt.sample(jax.random.PRNGKey(3), 40000)
        nl = -np.asarray(qt.log_prob(y))
        assert abs(nl.mean() - f["entropy"](0.16, tt, 0.1, 20.0)) < 3 * nl.std(ddof=1) / math.sqrt(nl.size)


@given(x=st.floats(-3, 3), mu=st.floats(-1, 1), s2=st.floats(0.05, 2.0), pv=st.floats(0.5, 2.0), pm=st.floats(-0.5, 0.5))
def test_theorem2_tight_and_theorem1_bound(x, mu, s2, pv, pm):
    f, fk = song2021.functions("vp"), sde.functions("vp")
    p, e = (0.1, 20.0), 1e-3
    aT, vT = fk["alpha"](1.0, *p), fk["alpha"](1.0, *p) ** 2 * s2 + fk["sigma2"](1.0, *p)
    tight = f["theorem2_bound"](x, mu, s2, e, 1.0, aT * mu, vT, *p)
    assert tight == pytest.approx(f["neg_log_q"](x, mu, s2, e, *p), rel=1e-9, abs=1e-9)
    # Theorem 1 with the exact score: KL(q_ε ‖ p_ε^SDE) ≤ KL(q_T ‖ π), equality (0) at π = q_T.
    kl_e = f["theorem1_kl_eps"](mu, s2, e, 1.0, pm, pv, *p)
    kl_T = f["kl_gaussian"](aT, fk["sigma2"](1.0, *p), mu, s2, pm, pv)
    assert -1e-12 <= kl_e <= kl_T + 1e-12
    assert abs(f["theorem1_kl_eps"](mu, s2, e, 1.0, aT * mu, vT, *p)) < 1e-9


def test_closed_form_vs_ode_likelihood():
    """log q_ε(x) in closed form equals the PF-ODE likelihood with the exact score and q_T prior."""
    from numerics.likelihood import ode_log_likelihood

    mu, s2 = np.array([0.7, -0.4]), np.array([0.16, 0.9])
    mix = numerics.GaussianMixture.from_diagonal([1.0], mu[None], s2[None])
    f = song2021.functions("vp")
    n = numerics.VPSDE(0.1, 20.0, t_min=1e-3)
    x = jnp.array([[0.5, 0.1], [1.2, -1.5], [-0.3, 0.4]])
    res = ode_log_likelihood(mix.score_fn(n), n, x, rtol=1e-10, atol=1e-10, prior_log_prob=mix.diffuse(n, n.T).log_prob)
    closed = -sum(f["neg_log_q"](np.asarray(x[:, d]), mu[d], s2[d], 1e-3, 0.1, 20.0) for d in range(2))
    np.testing.assert_allclose(np.asarray(res.log_prob), closed, atol=1e-6)


# --- VDM --------------------------------------------------------------------------------------------
def test_vdm_reference_and_ordering():
    v = TARGETS["vdm"]
    assert v["L_inf"] == pytest.approx(6.734697719094679, rel=1e-13)
    ref = {1: 190585.72, 2: 4857.47, 4: 113.37, 8: 23.86, 16: 12.06, 64: 7.714, 256: 6.963, 1024: 6.7907}
    for T, r in ref.items():
        assert v["L_T"][str(T)] == pytest.approx(r, abs=0.006 * 10 ** (len(str(int(r))) - 1) / 10 + 5e-4)
    Ts = sorted(int(k) for k in v["L_T"])
    L = [v["L_T"][str(T)] for T in Ts]
    assert all(a > b for a, b in zip(L, L[1:], strict=False)) and L[-1] > v["L_inf"]
    assert (L[-1] - v["L_inf"]) * 1024 < (v["L_T"]["256"] - v["L_inf"]) * 256 * 1.1  # O(1/T)
    # numpy and 30-digit evaluation agree; schedule invariance: L_∞ only depends on the endpoints
    assert vdm.L_T_exact(1.1, 0.3, 0.25, 64, -13.3, 5.0) == pytest.approx(v["L_T"]["64"], rel=1e-12)


def test_vdm_mse_vs_numerics_denoiser_monte_carlo():
    mix = numerics.GaussianMixture.from_diagonal([1.0], [[0.3]], [[0.25]])
    n = numerics.LogSNRSDE(numerics.CosineGamma())
    x, tt = 1.1, 0.55
    a, s = float(n.mean_coeff(tt)), float(n.std(tt))
    eps = jax.random.normal(jax.random.PRNGKey(5), (20000, 1))
    err = np.asarray((x - mix.denoiser(n, tt, a * x + s * eps))[:, 0] ** 2)
    exact = vdm.functions()["mse"](x, 0.3, 0.25, float(jnp.exp(n.log_snr(tt))))
    assert abs(err.mean() - exact) < 3 * err.std(ddof=1) / math.sqrt(err.size)


# --- Lu et al. 2022 ------------------------------------------------------------------------------------
def test_lu_second_and_third_order_targets_vs_numerics():
    mix = numerics.GaussianMixture.from_diagonal([1.0], [[0.3]], [[0.5]])
    n = numerics.VPSDE(0.1, 20.0)
    tt, xt, delta, D2 = 0.2, 0.8, 0.3, -0.2
    a, s = float(n.mean_coeff(tt)), float(n.std(tt))
    w, m, cov = mix.posterior(n, tt, jnp.array([xt]))
    x0 = m[0, 0] + jnp.sqrt(cov[0, 0, 0]) * jax.random.normal(jax.random.PRNGKey(7), (40000,))
    eps = (xt - a * x0) / s
    score = float(mix.diffuse(n, tt).score(jnp.array([xt]))[0])
    hess = float(mix.diffuse(n, tt).hessian(jnp.array([xt]))[0, 0])
    f = lu2022.functions()
    c = np.asarray(s * (score + delta) + eps)
    mc2 = (c**2 - 1) / s**2
    t2 = f["second_order_target"](xt, 0.3, 0.5, a, s, delta)
    assert t2 == pytest.approx(hess + delta**2, rel=1e-10)
    assert abs(mc2.mean() - t2) < 3 * mc2.std(ddof=1) / math.sqrt(mc2.size)
    s2h = hess + D2
    Y = -(c**3) + (s**2 * s2h + 3) * c + 2 * s**2 * s2h * c
    t3 = f["third_order_target"](xt, 0.3, 0.5, a, s, delta, D2)
    g3 = float(mix.diffuse(n, tt).grad_laplacian(jnp.array([xt]))[0])
    assert t3 == pytest.approx(g3 - delta**3 + 3 * D2 * delta, abs=1e-10)
    mc3 = Y / s**3
    assert abs(mc3.mean() - t3) < 3 * mc3.std(ddof=1) / math.sqrt(mc3.size)


# --- Li & Yan 2024 -------------------------------------------------------------------------------------
def test_li_yan_formula_quadrature_and_ddpm():
    x, mu, s2 = 0.5, 0.3, 0.25
    exact = -0.5 * math.log(2 * math.pi * s2) - (x - mu) ** 2 / (2 * s2)
    f = li_yan2024.functions()["integrand_dsm"]
    val = -0.5 * math.log(2 * math.pi * math.e) - 0.5 * integrate.quad(lambda t: f(x, mu, s2, t), 0, 1, epsabs=1e-13, limit=200)[0]
    assert val == pytest.approx(exact, abs=1e-10)
    errs = [abs(li_yan2024.ddpm_log_density(x, mu, s2, np.linspace(1e-4, 0.02 * 1000 / K, K)) - exact) for K in (250, 1000)]
    assert errs[1] < errs[0] and errs[1] < 5e-3


def test_li_yan_ddpm_reference_case():
    """THEORY.md §5.3: K = 1000, linear β 1e-4..0.02, "Gaussian data" gives −1.12662 vs exact −1.12765.
    Identified: data N(0.7, 0.16) at x = 0.7 ± 0.6 (the Gaussian case depends on (x − μ)² only)."""
    betas = np.linspace(1e-4, 0.02, 1000)
    for x in (0.1, 1.3):
        exact = -0.5 * math.log(2 * math.pi * 0.16) - (x - 0.7) ** 2 / 0.32
        assert exact == pytest.approx(-1.12765, abs=5e-6)
        assert li_yan2024.ddpm_log_density(x, 0.7, 0.16, betas) == pytest.approx(-1.12662, abs=5e-6)


# --- wrong affine models: Theorem 1 and Lu (3.1)–(3.3) (theory.affine vs numerics.checks.affine) ---------
AFFINE = {k: v for k, v in TARGETS["affine"].items() if "/" in k}


@pytest.fixture(scope="module")
def affine_numerics():
    from numerics.checks.affine import AffineModel, affine_summary

    d = TARGETS["affine"]["data"]
    mu, s2 = jnp.array([d["mu"]]), jnp.array([d["s2"]])
    n = numerics.VPSDE(0.1, 20.0)
    out = {}
    for key, rec in AFFINE.items():
        model = AffineModel(mu=mu, s2=s2, dm=jnp.array([rec["dm"]]), dv=jnp.array([rec["dv"]]))
        out[key] = affine_summary(mu, s2, model, n, t0=TARGETS["affine"]["eps"], prior="sde")
    return out


@pytest.mark.parametrize("key", sorted(AFFINE))
def test_affine_wrong_model_vs_numerics(key, affine_numerics):
    rec, s = AFFINE[key], affine_numerics[key]
    pairs = {"KL_T": s.kl_T, "KL_sde": s.kl_sde, "KL_ode": s.kl_ode, "J_SM": s.J_SM, "J_ODE": s.J_ODE,
             "J_Fisher": s.J_Fisher, "J_Fisher_bound": s.J_Fisher_bound}
    for name, val in pairs.items():
        assert rec[name] == pytest.approx(val, rel=1e-8), name
    assert s.fisher_ratio_max <= 1 + 1e-9  # numerics: over its quadrature nodes; theory: a geometric t grid


@pytest.mark.parametrize("key", sorted(AFFINE))
def test_affine_theorem1_and_lu_bounds(key):
    r = AFFINE[key]
    tol = 1e-10 * max(1.0, r["KL_ode"])
    # Theorem 1 with its exact gap J_gap = ½∫g² E(s_θ − ∇log p^SDE)² > 0: strict for a wrong model.
    assert r["KL_sde"] == pytest.approx(r["KL_T"] + r["J_SM"] - r["J_gap"], abs=tol)
    assert r["J_gap"] > 1e-3 and r["KL_sde"] < r["KL_T"] + r["J_SM"] - 1e-3
    # Lu (3.1) and the regression of THEORY §8 item 11: first-order matching does not bound the ODE KL.
    assert r["KL_ode"] == pytest.approx(r["KL_T"] + r["J_ODE"], abs=tol)
    assert r["J_Diff"] > 1e-3 and r["KL_ode"] > r["KL_T"] + r["J_SM"] + 1e-3
    # Cauchy–Schwarz (§3.2), both helpers, and the Grönwall high-order bounds (§3.3), tight K ≤ universal K.
    cs = lu2022.cauchy_schwarz_bound(r["KL_T"], r["J_SM"], r["J_Fisher"])
    assert cs == pytest.approx(affine.cauchy_schwarz_bound(r["KL_T"], r["J_SM"], r["J_Fisher"]), rel=1e-15)
    assert cs == pytest.approx(r["cs_bound"], rel=1e-11)
    assert r["KL_ode"] <= cs <= r["high_order_bound"] <= r["high_order_bound_universal"]
    assert r["J_Fisher"] <= r["J_Fisher_bound"] <= r["J_Fisher_bound_universal"]
    assert r["fisher_ratio_max"] <= 1 + 1e-9 and r["fisher_ratio_max_universal"] <= 1 + 1e-9


def test_affine_growth_factor_closed_form():
    """exp(½(γ(τ) − γ(t)) + ∫_t^τ f) = σ_τ/σ_t, numerically for VP (the universal Grönwall factor)."""
    fk = sde.functions("vp")
    p, t0, t1 = (0.1, 20.0), 0.05, 0.7
    integral_f = integrate.quad(lambda u: fk["f"](u, *p), t0, t1, epsabs=0, epsrel=1e-13)[0]
    lhs = math.exp(0.5 * (-fk["log_snr"](t1, *p) + fk["log_snr"](t0, *p)) + integral_f)
    rhs = affine.gronwall_growth_factor(math.sqrt(fk["sigma2"](t0, *p)), math.sqrt(fk["sigma2"](t1, *p)))
    assert lhs == pytest.approx(rhs, rel=1e-12)
