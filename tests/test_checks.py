"""Property-based tests of numerics.checks: every bound/identity of the four papers on random
mixtures (D 1–8, K 1–6), random SDEs and random model perturbations (THEORY.md §8)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numerics  # noqa: F401
from numerics import strategies as st_num
from numerics.checks import importance, kl_dynamics, li_yan2024, lu2022, song2021, vdm
from numerics.checks.affine import AffineModel, affine_summary
from numerics.checks.models import random_perturbation
from numerics.mixture import GaussianMixture
from numerics.sde import VPSDE, CosineGamma, LinearGamma, LogSNRSDE, SubVPSDE, VESDE

MIX = dict(max_dim=8, max_components=6)
FEW = settings(max_examples=3)


def _assert(r):
    assert r.holds, r


@st.composite
def mixture_pair(draw):
    D = draw(st.integers(1, 8))
    q = draw(st_num.mixtures(dim=D, max_components=6))
    p = draw(st_num.mixtures(dim=D, max_components=6))
    return q, p


@FEW
@given(mixture_pair(), st_num.sdes(), st.integers(0, 2**20))
def test_kl_dynamics_identity(qp, sde, seed):
    q, p = qp
    _assert(kl_dynamics.check_kl_dynamics(q, p, sde, seed=seed, n_samples=512, n_panels=6, order=10))


def test_kl_dynamics_matches_gaussian_closed_form():
    """K = 1: both sides against the closed-form Gaussian KLs."""
    sde = VPSDE()
    q = GaussianMixture.from_diagonal([1.0], [[0.3, 0.1]], [[0.2, 0.5]])
    p = GaussianMixture.from_diagonal([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    r = kl_dynamics.check_kl_dynamics(q, p, sde, n_samples=4096)

    def klg(m1, v1, m2, v2):
        return 0.5 * np.sum(v1 / v2 + (m1 - m2) ** 2 / v2 - 1 - np.log(v1 / v2))

    aT, vT = float(sde.mean_coeff(1.0)), float(sde.variance(1.0))
    m, v = np.array([0.3, 0.1]), np.array([0.2, 0.5])
    exact = klg(m, v, 0, 1) - klg(aT * m, aT**2 * v + vT, 0, aT**2 + vT)
    assert r.holds
    assert abs(r.rhs - exact) < 3 * r.stderr + 1e-3
    assert abs(r.lhs - exact) < 4 * r.stderr


@st.composite
def gaussian_and_affine(draw):
    D = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    mu = rng.uniform(-2, 2, D)
    s2 = np.exp(rng.uniform(np.log(0.05), 0.0, D))
    amp = draw(st.floats(0.0, 1.0))
    dm = amp * rng.normal(size=D) * 0.5
    dv = amp * rng.uniform(-0.5, 1.0, D)
    return mu, s2, AffineModel(jnp.asarray(mu), jnp.asarray(s2), jnp.asarray(dm), jnp.asarray(dv)), rng.normal(size=D)


@settings(max_examples=4)
@given(gaussian_and_affine(), st_num.sdes())
def test_affine_family_song_and_lu(case, sde):
    mu, s2, model, x = case
    _assert(song2021.check_theorem1_affine(mu, s2, model, sde))
    for r in song2021.check_theorem2_affine(mu, s2, model, sde, x):
        _assert(r)
    for r in lu2022.check_lu_affine(mu, s2, model, sde):
        if r.name != "lu_first_order_gap":  # J_Diff has no sign in general
            _assert(r)


@pytest.mark.parametrize("sde", [VPSDE(t_min=1e-5), SubVPSDE(t_min=1e-5), VESDE(t_min=1e-5)])
def test_affine_exact_score_references(sde):
    """THEORY.md §6.1 reference KL(q_T‖π) for N(0.7, 0.16); exact score ⇒ KL(q‖p^ODE) = KL(q_T‖π),
    KL(q‖p^SDE) ≤ KL(q_T‖π); with π = q_T everything vanishes."""
    ref = {VPSDE: 1.05808375153139e-5, SubVPSDE: 1.058208707285921e-5, VESDE: 9.800102267679329e-5}[type(sde)]
    m = AffineModel(jnp.array([0.7]), jnp.array([0.16]), jnp.zeros(1), jnp.zeros(1))
    s = affine_summary([0.7], [0.16], m, sde)
    assert s.kl_T == pytest.approx(ref, rel=1e-9)
    assert s.kl_ode == pytest.approx(s.kl_T, rel=1e-6)
    assert s.kl_sde <= s.kl_T and s.J_SM == 0.0
    r = song2021.check_theorem1_affine([0.7], [0.16], m, sde, prior="exact")
    assert r.holds and abs(r.lhs) < 1e-12


def test_lu_regression_first_order_bound_fails_for_ode():
    """THEORY.md §8 item 11: v̂ = v(1 + 0.5 t(1−t)) on VP, N(0.7, 0.16): KL(q‖p^ODE) > KL(q_T‖π) + J_SM,
    while Theorem 1 holds for the SDE model and the high-order bound holds for the ODE model."""
    sde = VPSDE(t_min=1e-5)
    m = AffineModel(jnp.array([0.7]), jnp.array([0.16]), jnp.zeros(1), jnp.array([0.125]))
    res = {r.name: r for r in lu2022.check_lu_affine([0.7], [0.16], m, sde)}
    assert res["lu_first_order_gap"].significant
    assert res["lu_high_order_bound"].significant and res["lu_cauchy_schwarz"].holds
    assert res["lu_ode_kl_identity"].holds
    assert song2021.check_theorem1_affine([0.7], [0.16], m, sde).significant
    assert song2021.check_ode_vs_sde_bound_affine([0.7], [0.16], m, sde).significant


@st.composite
def mixture_sde_model(draw, kinds=("vp", "subvp", "ve")):
    q = draw(st_num.mixtures(**MIX))
    sde = draw(st_num.sdes(kinds=kinds))
    seed = draw(st.integers(0, 2**20))
    kind = draw(st.sampled_from(["general", "rotation", "gradient"]))
    amp = draw(st.floats(0.05, 0.5))
    return q, sde, random_perturbation(q.score_fn(sde), sde, q.dim, seed, amp, kind=kind), seed


@FEW
@given(mixture_sde_model())
def test_song_mixture_identities(case):
    q, sde, model, seed = case
    r, c, c_se = song2021.check_dsm_constant(q, model, sde, seed=seed, n_samples=256, n_panels=6, order=10)
    _assert(r)
    x = q.sample(numerics_key(seed), 1)[0]
    _assert(song2021.check_theorem2_stein(q, model, sde, x, seed=seed, n_samples=256, n_panels=6, order=10))
    _assert(song2021.check_theorem2_tight(q, sde, x, seed=seed, n_samples=256, n_panels=6, order=10))
    _assert(song2021.check_eps_offset_bound(q, model, sde, seed=seed, n_samples=512, n_panels=6, order=10))
    if q.n_components == 1:  # symbolic target: ½ Σ log[(1 + λ_i SNR_ε)/(1 + λ_i SNR_T)]
        lam = np.asarray(q.eigvals[0])
        snr = lambda t: math.exp(float(sde.log_snr(jnp.asarray(t))))
        target = 0.5 * np.sum(np.log((1 + lam * snr(sde.t_min)) / (1 + lam * snr(sde.T))))
        assert abs(c - target) < 3 * c_se + 1e-6


def numerics_key(seed):
    import jax

    return jax.random.PRNGKey(seed)


@FEW
@given(st_num.mixtures(**MIX), st.integers(0, 2**20))
def test_vdm_checks(q, seed):
    lin = LogSNRSDE(LinearGamma(-10.0, 6.0))
    cos = LogSNRSDE(CosineGamma(-10.0, 6.0))
    for r in vdm.check_vdm_monotone(q, lin, T_list=(4, 16), seed=seed, n_samples=128):
        _assert(r)
    _assert(vdm.check_vdm_schedule_invariance(q, lin, cos, seed=seed, n_samples=128))
    model = random_perturbation(q.score_fn(lin), lin, q.dim, seed, 0.3)
    _assert(vdm.check_vdm_perturbed(q, lin, model, seed=seed, n_samples=128))


def test_vdm_song_identity():
    q = GaussianMixture.from_diagonal([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]], [[0.3, 0.2], [0.2, 0.4]])
    lin = LogSNRSDE(LinearGamma())
    model = random_perturbation(q.score_fn(lin), lin, q.dim, 3, 0.3)
    _assert(vdm.check_vdm_song(q, lin, model, n_samples=32))


def test_vdm_gaussian_closed_form():
    """THEORY.md §4.5: E_x L_∞ = ½ log((1 + v_max s²)/(1 + v_min s²)) and L_∞(x) in closed form."""
    sde = LogSNRSDE(LinearGamma())
    g = GaussianMixture.from_diagonal([1.0], [[0.3]], [[0.25]])
    L = vdm.diffusion_losses(g, sde, g.score_fn(sde), T_list=(), n_samples=4000)
    smin, smax = math.exp(-5.0), math.exp(13.3)
    m, se = float(L["inf"].mean()), float(L["inf"].std() / math.sqrt(4000))
    assert abs(m - 0.5 * math.log((1 + smax * 0.25) / (1 + smin * 0.25))) < 3 * se
    assert vdm.gaussian_l_inf([1.1], [0.3], [0.25], smin, smax) == pytest.approx(6.734697719094679, rel=1e-12)


@FEW
@given(st_num.mixtures(**MIX), st.integers(0, 2**20))
def test_li_yan_density_formula(q, seed):
    x = q.sample(numerics_key(seed), 1)[0]
    for r in li_yan2024.check_density_formula(q, x, seed=seed, n_samples=128):
        _assert(r)
    for r in li_yan2024.check_elbo_minimiser(q):
        _assert(r)


def test_li_yan_ddpm_formula():
    q = GaussianMixture.from_diagonal([0.4, 0.6], [[-1.0, 0.0], [1.0, 0.5]], [[0.3, 0.2], [0.2, 0.4]])
    _assert(li_yan2024.check_ddpm_formula(q, jnp.array([0.2, 0.1]), n_samples=256))


@FEW
@given(st_num.mixtures(**MIX), st_num.sdes(), st.integers(0, 2**20))
def test_lu_high_order_minimisers(q, sde, seed):
    for r in lu2022.check_second_order_minimiser(q, sde, seed=seed, n_points=3):
        _assert(r)
    _assert(lu2022.check_third_order_minimiser(q, sde, seed=seed, n_points=3))


@settings(max_examples=2)
@given(mixture_sde_model(kinds=("vp", "subvp")))
def test_importance_sampling_same_mean(case):
    q, sde, model, seed = case
    r = importance.check_importance_sampling(q, model, sde, seed=seed, n_samples=4000, n_quad_samples=128)
    _assert(r)
    assert r.settings["var_is"] > 0 and r.settings["var_uniform"] > 0


def test_identity_check_detects_wrong_value():
    """Negative control: the tightness check with a wrong data mixture must fail."""
    sde = VPSDE(t_min=1e-3)
    q = GaussianMixture.from_diagonal([0.5, 0.5], [[-1.0], [1.0]], [[0.1], [0.1]])
    p = GaussianMixture.from_diagonal([1.0], [[0.0]], [[1.0]])
    r = song2021.check_theorem2_tight(q, sde, jnp.array([0.9]), n_samples=512)
    assert r.holds
    # KL dynamics with the sides mismatched (p's own KL dynamics vs q's samples) must not hold
    bad = kl_dynamics.check_kl_dynamics(q, p, sde, n_samples=1024)
    assert bad.holds
    wrong = song2021.engine.identity("x", "y", "z", bad.lhs, bad.rhs + 10 * bad.stderr + 0.1, bad.stderr)
    assert not wrong.holds


def test_report_main_small(tmp_path):
    from numerics import report

    rc = report.main(["--out", str(tmp_path), "--n-samples", "64", "--quiet"])
    import json

    data = json.loads((tmp_path / "report.json").read_text())
    assert len(data["results"]) >= 30
    assert (tmp_path / "report.md").read_text().startswith("# Bounds")
    assert rc in (0, 1)
    assert sum(r["holds"] for r in data["results"]) >= len(data["results"]) - 2
