"""Property-based tests of numerics.checks: every bound/identity of the four papers on random
mixtures, random SDEs and random model perturbations (THEORY.md §8).

Cost model: >95% of the time of these checks is XLA compilation, keyed on array shapes and on the
SDE (its parameters are static fields); evaluating another mixture of the same shapes is nearly
free. So in the default ``ci`` hypothesis profile every example uses the shapes, SDEs and Monte-Carlo
sizes of the report's built-in cases (:mod:`numerics.checks.cases`: data D = 2, K = 3, model
mixture K = 2, VP/VE with t_min = 1e-3; ``N_REPORT`` paths) — all mixture parameters, points,
seeds, perturbation kinds and amplitudes stay random — and the examples of a test and
``test_report_main_small`` share compiled code. The ``thorough`` profile
(WORKBENCH_HYPOTHESIS_PROFILE=thorough) draws D 1–8, K 1–6 and SDE parameters from st_num.sdes.
"""

import dataclasses
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numerics  # noqa: F401
from numerics import strategies as st_num
from numerics.checks import cases, engine, importance, kl_dynamics, li_yan2024, lu2022, ode_model, song2021, vdm
from numerics.checks.affine import AffineModel, affine_summary
from numerics.checks.models import random_perturbation
from numerics.mixture import GaussianMixture
from numerics.sde import VPSDE, CosineGamma, LinearGamma, LogSNRSDE, SubVPSDE, VESDE

BROAD = os.environ.get("WORKBENCH_HYPOTHESIS_PROFILE", "ci") != "ci"
MIX = dict(max_dim=8, max_components=6)
N_REPORT = 256  # --n-samples of test_report_main_small; run_all's sizes below are derived from it
CASE_SDES = {"vp": VPSDE(t_min=1e-3), "ve": VESDE(t_min=1e-3)}  # the report's SDEs (cases.run_all)


def data_mixtures(dim=None):
    if BROAD:
        return st_num.mixtures(**MIX) if dim is None else st_num.mixtures(dim=dim, max_components=6)
    return st_num.mixtures(dim=2, min_components=3, max_components=3)  # cases.data_mixture's shapes


def sdes(kinds=("vp", "subvp", "ve")):
    if BROAD:
        return st_num.sdes(kinds=kinds)
    return st.sampled_from([CASE_SDES[k] for k in kinds if k in CASE_SDES])


def _assert(r):
    assert r.holds, r


def _confirmation(check, *args, seed: int, n_samples: int, confirm: int = 16, **kw):
    """The confirming run of a Monte-Carlo check (see :func:`_assert_mc`): fresh paths, ``confirm``×
    the samples."""
    return check(*args, seed=seed + 7919, n_samples=confirm * n_samples, **kw)


def _assert_mc(check, *args, seed: int, n_samples: int, confirm: int = 16, **kw):
    """Assert every record of a Monte-Carlo check holds; a failing one is first re-run on fresh paths
    with ``confirm``× the samples (SE ÷ √confirm) and fails the test only if it fails there too. With
    hundreds of examples (the thorough profile) a one-sided 3-SE rule alone gives false alarms
    (0.13% per record), and at a few hundred heavy-tailed per-path values the SE itself is
    under-estimated now and then (seen: −3.0 SE at 256 paths, +0.3 SE at 4096, same case). A real
    violation persists and fails; both records are in the message."""
    def records(result):
        return list(result) if isinstance(result, list) else [result]

    first = records(check(*args, seed=seed, n_samples=n_samples, **kw))
    if all(r.holds for r in first):
        return first
    again = {r.name: r for r in records(_confirmation(check, *args, seed=seed, n_samples=n_samples, confirm=confirm, **kw))}
    for r in first:
        if not r.holds:
            assert again[r.name].holds, (r, again[r.name])
    return first


@st.composite
def mixture_pair(draw):
    if BROAD:
        D = draw(st.integers(1, 8))
        return draw(st_num.mixtures(dim=D, max_components=6)), draw(st_num.mixtures(dim=D, max_components=6))
    # cases.data_mixture / cases.model_mixture shapes
    return draw(data_mixtures()), draw(st_num.mixtures(dim=2, min_components=2, max_components=2))


@given(mixture_pair(), sdes(("vp", "ve")), st.integers(0, 2**20))
def test_kl_dynamics_identity(qp, sde, seed):
    q, p = qp
    _assert_mc(kl_dynamics.check_kl_dynamics, q, p, sde, seed=seed, n_samples=N_REPORT)


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
    D = draw(st.integers(1, 8)) if BROAD else 2  # cases.GAUSS_MU's dimension
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    mu = rng.uniform(-2, 2, D)
    s2 = np.exp(rng.uniform(np.log(0.05), 0.0, D))
    amp = draw(st.floats(0.0, 1.0))
    dm = amp * rng.normal(size=D) * 0.5
    dv = amp * rng.uniform(-0.5, 1.0, D)
    return mu, s2, AffineModel(jnp.asarray(mu), jnp.asarray(s2), jnp.asarray(dm), jnp.asarray(dv)), rng.normal(size=D)


@given(gaussian_and_affine(), sdes())
def test_affine_family_song_and_lu(case, sde):
    mu, s2, model, x = case
    _assert(song2021.check_theorem1_affine(mu, s2, model, sde))
    for r in song2021.check_theorem2_affine(mu, s2, model, sde, x):
        _assert(r)
    for r in lu2022.check_lu_affine(mu, s2, model, sde):
        if r.name != "lu_first_order_gap":  # J_Diff has no sign in general
            _assert(r)


# the report's SDEs (t_min does not enter KL(q_T‖π)) and D = 2: shares compiled code with the report
@pytest.mark.parametrize("sde", [CASE_SDES["vp"], SubVPSDE(), CASE_SDES["ve"]])
def test_affine_exact_score_references(sde):
    """THEORY.md §6.1 reference KL(q_T‖π) for N(0.7, 0.16) (here two independent coordinates: twice
    the 1-D value); exact score ⇒ KL(q‖p^ODE) = KL(q_T‖π), KL(q‖p^SDE) ≤ KL(q_T‖π); with π = q_T
    everything vanishes."""
    ref = 2 * {VPSDE: 1.05808375153139e-5, SubVPSDE: 1.058208707285921e-5, VESDE: 9.800102267679329e-5}[type(sde)]
    mu, s2 = np.array([0.7, 0.7]), np.array([0.16, 0.16])
    m = AffineModel(jnp.asarray(mu), jnp.asarray(s2), jnp.zeros(2), jnp.zeros(2))
    s = affine_summary(mu, s2, m, sde)
    assert s.kl_T == pytest.approx(ref, rel=1e-9)
    assert s.kl_ode == pytest.approx(s.kl_T, rel=1e-6)
    assert s.kl_sde <= s.kl_T and s.J_SM == 0.0
    r = song2021.check_theorem1_affine(mu, s2, m, sde, prior="exact")
    assert r.holds and abs(r.lhs) < 1e-12


def test_affine_summary_rejects_an_unknown_prior():
    """prior is "sde" or "exact"; anything else (e.g. "Exact", "q_T") was silently taken as the SDE's prior."""
    mu, s2 = np.array([0.7]), np.array([0.16])
    m = AffineModel(jnp.asarray(mu), jnp.asarray(s2), jnp.zeros(1), jnp.zeros(1))
    for bad in ("Exact", "q_T", ""):
        with pytest.raises(ValueError, match=r"prior must be one of \('sde', 'exact'\); got"):
            affine_summary(mu, s2, m, CASE_SDES["vp"], prior=bad)
    with pytest.raises(ValueError, match="prior must be one of"):
        song2021.check_theorem1_affine(mu, s2, m, CASE_SDES["vp"], prior="exact_T")


def test_lu_regression_first_order_bound_fails_for_ode():
    """THEORY.md §8 item 11: v̂ = v(1 + 0.5 t(1−t)) on VP, N(0.7, 0.16): KL(q‖p^ODE) > KL(q_T‖π) + J_SM,
    while Theorem 1 holds for the SDE model and the high-order bound holds for the ODE model."""
    sde = CASE_SDES["vp"]  # two independent copies of the 1-D case: the report's D and SDE (shared compilation)
    mu, s2 = np.array([0.7, 0.7]), np.array([0.16, 0.16])
    m = AffineModel(jnp.asarray(mu), jnp.asarray(s2), jnp.zeros(2), jnp.array([0.125, 0.125]))
    res = {r.name: r for r in lu2022.check_lu_affine(mu, s2, m, sde)}
    assert res["lu_first_order_gap"].significant
    assert res["lu_high_order_bound"].significant and res["lu_cauchy_schwarz"].holds
    assert res["lu_ode_kl_identity"].holds
    assert song2021.check_theorem1_affine(mu, s2, m, sde).significant
    assert song2021.check_ode_vs_sde_bound_affine(mu, s2, m, sde).significant


@st.composite
def mixture_sde_model(draw, kinds=("vp", "subvp", "ve")):
    q = draw(data_mixtures())
    sde = draw(sdes(kinds))
    seed = draw(st.integers(0, 2**20))
    kind = draw(st.sampled_from(["general", "rotation", "gradient"]))
    amp = draw(st.floats(0.05, 0.5))
    return q, sde, random_perturbation(q.score_fn(sde), sde, q.dim, seed, amp, kind=kind), seed


@given(mixture_sde_model(kinds=("vp", "subvp", "ve") if BROAD else ("vp",)))
def test_song_mixture_identities(case):
    q, sde, model, seed = case
    # ≥ 256 paths: the per-path values (e.g. e_1·(∇log q + ε/σ) in the DSM constant) are heavy-tailed,
    # and at 64 paths their SE estimate is too noisy for a 3-SE rule (a 3.8-SE false alarm was seen)
    n = N_REPORT
    c, c_se = _assert_dsm_constant(q, model, sde, seed=seed, n_samples=n)
    x = q.sample(numerics_key(seed), 1)[0]
    _assert_mc(song2021.check_theorem2_stein, q, model, sde, x, seed=seed, n_samples=n)
    _assert_mc(song2021.check_theorem2_tight, q, sde, x, seed=seed, n_samples=n)
    _assert_mc(song2021.check_eps_offset_bound, q, model, sde, seed=seed, n_samples=n)
    if q.n_components == 1:  # symbolic target (THEORY.md §2.5); K = 1 always: test_dsm_constant_gaussian
        _assert_dsm_constant_gaussian(q, sde, c, c_se)


def _gaussian_dsm_constant(q, sde) -> float:
    """½ Σ log[(1 + λ_i SNR_ε)/(1 + λ_i SNR_T)], the closed-form DSM constant for Gaussian data."""
    lam = np.asarray(q.eigvals[0])
    snr = lambda t: math.exp(float(sde.log_snr(jnp.asarray(t))))  # noqa: E731
    return float(0.5 * np.sum(np.log((1 + lam * snr(sde.t_min)) / (1 + lam * snr(sde.T)))))


def _dsm_constant_matches_gaussian(q, sde, c, c_se) -> bool:
    return abs(c - _gaussian_dsm_constant(q, sde)) < 3 * c_se + 1e-6


def _assert_dsm_constant_gaussian(q, sde, c, c_se):
    assert _dsm_constant_matches_gaussian(q, sde, c, c_se), (c, c_se, _gaussian_dsm_constant(q, sde))


def _assert_dsm_constant(q, model, sde, *, seed: int, n_samples: int, gaussian: bool = False):
    """check_dsm_constant's identity record — and with ``gaussian`` the constant against its closed
    form — confirmed on fresh paths as in :func:`_assert_mc` before failing. Returns the first run's
    (constant, SE). Thorough profile, seed 32892: identity gap +3.54 SE at 256 paths, +0.69 SE at 4096."""
    r, c, c_se = song2021.check_dsm_constant(q, model, sde, seed=seed, n_samples=n_samples)
    if r.holds and (not gaussian or _dsm_constant_matches_gaussian(q, sde, c, c_se)):
        return c, c_se
    r_again, c_again, se_again = _confirmation(song2021.check_dsm_constant, q, model, sde, seed=seed, n_samples=n_samples)
    assert r.holds or r_again.holds, (r, r_again)
    if gaussian:
        _assert_dsm_constant_gaussian(q, sde, c_again, se_again)
    return c, c_se


@given(st_num.mixtures(dim=2, max_components=1), st.integers(0, 2**20))
def test_dsm_constant_gaussian(g, seed):
    """Gaussian data: the DSM constant J_DSM(exact) against its closed form, for a random perturbed
    model. The Gaussian is written as 3 identical components (the same density; the report's shapes,
    so the compiled code is shared)."""
    q = GaussianMixture(np.full(3, 1 / 3), np.repeat(np.asarray(g.means), 3, 0), np.repeat(np.asarray(g.covariances), 3, 0))
    sde = CASE_SDES["vp"]
    model = random_perturbation(q.score_fn(sde), sde, q.dim, seed, 0.3)
    _assert_dsm_constant(q, model, sde, seed=seed, n_samples=N_REPORT, gaussian=True)


def numerics_key(seed):
    import jax

    return jax.random.PRNGKey(seed)


@given(data_mixtures(), st.integers(0, 2**20))
def test_vdm_checks(q, seed):
    if BROAD:
        lin, cos, n = LogSNRSDE(LinearGamma(-10.0, 6.0)), LogSNRSDE(CosineGamma(-10.0, 6.0)), 128
    else:  # the report's schedules and size (cases.run_all: max(64, n_samples // 4))
        lin, cos, n = LogSNRSDE(LinearGamma()), LogSNRSDE(CosineGamma()), max(64, N_REPORT // 4)
    _assert_mc(vdm.check_vdm_monotone, q, lin, T_list=(4, 16), seed=seed, n_samples=n)
    _assert_mc(vdm.check_vdm_schedule_invariance, q, lin, cos, seed=seed, n_samples=n)
    model = random_perturbation(q.score_fn(lin), lin, q.dim, seed, 0.3)
    _assert_mc(vdm.check_vdm_perturbed, q, lin, model, seed=seed, n_samples=n)


def test_vdm_schedule_invariance_is_a_quadrature_identity():
    """THEORY.md §8 item 19: on common (x₀, ε) paths two schedules with equal endpoints give the same L_∞
    to 1e-8, far inside its Monte-Carlo SE; moving γ_max by 1e-3 (L_∞ grows by ~1e-5 nats, invisible to
    a Monte-Carlo comparison; measured 5e-6, 49 × the tolerance) fails the check, with the sign of the
    larger SNR range."""
    q = cases.data_mixture()
    lin = LogSNRSDE(LinearGamma())
    same = vdm.check_vdm_schedule_invariance(q, lin, LogSNRSDE(CosineGamma()), n_samples=64)
    assert same.holds and abs(same.gap) < 1e-8 and same.settings["max_abs_path_difference"] < 1e-8, same
    assert same.settings["L_inf_mc_se"] > 1e6 * abs(same.gap), same
    moved = vdm.check_vdm_schedule_invariance(q, lin, LogSNRSDE(CosineGamma(gamma_max=5.0 + 1e-3)), n_samples=64)
    assert not moved.holds and -1e-3 < moved.gap < -10 * moved.settings["atol"], moved


def test_vdm_vp_ve_rescaling():
    """THEORY.md §4.4 / §8 item 19: the VE process with the score_sde kernel and the VP process with the
    same SNR(t) give the same L_∞ path by path (measured 1.4e-14); a VE whose σ_max differs by 0.1%
    (another SNR_min) does not match the VP process built for the first."""
    q = cases.data_mixture()
    ve = VESDE(kernel="score_sde")
    r = vdm.check_vdm_vp_ve_invariance(q, ve, n_samples=64)
    _assert(r)
    assert r.name == "vdm_Linf_vp_ve_rescaling" and r.settings["max_abs_path_difference"] < 1e-8, r
    vp = vdm.vp_with_snr_of(ve)
    _, L = vdm.common_path_losses(q, {"vp": vp, "ve": VESDE(sigma_max=50.05, kernel="score_sde")}, n_samples=64)
    assert not vdm.schedule_invariance(L["vp"], L["ve"]).holds


def test_vdm_song_identity():
    q = cases.data_mixture()
    lin = LogSNRSDE(LinearGamma())
    model = random_perturbation(q.score_fn(lin), lin, q.dim, 3, 0.3)
    _assert(vdm.check_vdm_song(q, lin, model, n_samples=max(64, N_REPORT // 4)))


def test_vdm_gaussian_closed_form():
    """THEORY.md §4.5: E_x L_∞ = ½ log((1 + v_max s²)/(1 + v_min s²)) and L_∞(x) in closed form."""
    sde = LogSNRSDE(LinearGamma())
    g = GaussianMixture.from_diagonal([1.0], [[0.3]], [[0.25]])
    L = vdm.diffusion_losses(g, sde, g.score_fn(sde), T_list=(), n_samples=4000)
    smin, smax = math.exp(-5.0), math.exp(13.3)
    m, se = float(L["inf"].mean()), float(L["inf"].std() / math.sqrt(4000))
    assert abs(m - 0.5 * math.log((1 + smax * 0.25) / (1 + smin * 0.25))) < 3 * se
    assert vdm.gaussian_l_inf([1.1], [0.3], [0.25], smin, smax) == pytest.approx(6.734697719094679, rel=1e-12)


@given(data_mixtures(), st.integers(0, 2**20))
def test_li_yan_density_formula(q, seed):
    x = q.sample(numerics_key(seed), 1)[0]
    _assert_mc(li_yan2024.check_density_formula, q, x, seed=seed, n_samples=max(128, N_REPORT // 2))
    results = li_yan2024.check_elbo_minimiser(q)
    for r in results:
        _assert(r)
    # not a tautology: at dv = 0.2 the bound is strictly loose, by an amount that depends on θ
    bound, tight, converging = results
    gaps = list(bound.settings["elbo_minus_nll_at_theta"].values())
    assert bound.significant and max(gaps) > 2 * min(gaps) > 0, bound
    assert converging.settings["minimisers"][0.2][0] != pytest.approx(converging.settings["minimisers"][0.2][1], rel=1e-3)


def test_li_yan_ddpm_formula():
    """THEORY.md §5.3 and §8 item 22, with the noise by Gauss–Hermite quadrature (no Monte-Carlo error):
    the DDPM sum's error is first order in 1/K (it halves per doubling of K), large enough that the sum
    alone would fail the 1e-4·D identity, and its Richardson value meets it; the Monte-Carlo form agrees
    within its SE. A 1-D Gaussian reproduces THEORY's reference (error ~1e-3 at K = 1000)."""
    q = GaussianMixture.from_diagonal([0.2, 0.3, 0.5], [[-1.0, 0.0], [1.0, 0.5], [0.0, 1.0]],
                                      [[0.3, 0.2], [0.2, 0.4], [0.5, 0.5]])  # cases.data_mixture's shapes
    x = jnp.array([0.2, 0.1])
    r = li_yan2024.check_ddpm_formula(q, x)
    _assert(r)
    assert r.settings["noise"] == "quadrature" and r.stderr == 0.0
    assert abs(r.settings["error_ratio_per_doubling"] - 0.5) < 0.01, r.settings
    assert abs(r.settings["ddpm_sum_error"]) > 10 * r.settings["atol"], r.settings
    _assert(li_yan2024.check_ddpm_formula(q, x, noise="monte_carlo", n_samples=max(64, N_REPORT // 4)))
    g = GaussianMixture.from_diagonal([1.0], [[0.3]], [[0.25]])
    rg = li_yan2024.check_ddpm_formula(g, jnp.array([1.1]))
    _assert(rg)
    assert 2e-4 < abs(rg.settings["ddpm_sum_error"]) < 3e-3, rg.settings
    with pytest.raises(ValueError, match="noise='quadrature'.*D <= 2"):
        li_yan2024.check_ddpm_formula(GaussianMixture.from_diagonal([1.0], [[0.0] * 3], [[1.0] * 3]), jnp.zeros(3),
                                      noise="quadrature")


@given(data_mixtures(), sdes(), st.integers(0, 2**20))
def test_lu_high_order_minimisers(q, sde, seed):
    for r in lu2022.check_second_order_minimiser(q, sde, seed=seed, n_points=3):
        _assert(r)
    _assert(lu2022.check_third_order_minimiser(q, sde, seed=seed, n_points=3))


def test_a_non_finite_error_at_one_point_fails_the_lu_minimiser_checks(monkeypatch):
    """The checks take the worst error over their points: a NaN at the third of eight points (where
    Python's ``max`` would return the largest finite error) makes each check fail."""
    q, _, sde, _ = _report_case()
    for name in ("s2_star", "s3_star"):
        original, calls = getattr(lu2022, name), []

        def poisoned(*args, original=original, calls=calls):
            calls.append(1)
            out = original(*args)
            return out * jnp.nan if len(calls) == 3 else out

        monkeypatch.setattr(lu2022, name, poisoned)
    results = [*lu2022.check_second_order_minimiser(q, sde, n_points=8), lu2022.check_third_order_minimiser(q, sde, n_points=8)]
    assert all(math.isnan(r.lhs) and not r.holds for r in results), results
    assert math.isnan(engine.worst([1e-12, float("nan"), 0.5])) and engine.worst([1e-12, 0.5]) == 0.5


@given(mixture_sde_model(kinds=("vp", "subvp")))
def test_importance_sampling_same_mean(case):
    q, sde, model, seed = case
    # thorough profile, seed 231 (1-D, t_min = 1e-4): −4.9 SE at 5120 samples, −0.1 SE at 81920 — the
    # uniform-t estimator is heavy-tailed (its variance grows like 1/t_min), so its SE is under-estimated
    same, quad = _assert_mc(importance.check_importance_sampling, q, model, sde, seed=seed, n_samples=20 * N_REPORT,
                            n_quad_samples=128)
    assert same.settings["var_is"] > 0 and same.settings["var_uniform"] > 0
    assert (same.name, quad.name) == ("is_same_mean", "is_matches_quadrature") and quad.lhs == same.rhs


def test_importance_sampling_check_detects_a_wrong_t_density(monkeypatch):
    """Negative control of the IS check: t drawn from p(t) on [1e-2, T] while the weight keeps the
    normaliser of [t_min, T] (a sampler/normaliser mismatch) biases the IS mean far beyond 3 SE of the
    quadrature value; the correct sampler agrees with it (report's case and sizes)."""
    q, _, sde, _ = _report_case()
    model = random_perturbation(q.score_fn(sde), sde, q.dim, 11, 0.3)
    size = dict(n_samples=20 * N_REPORT, n_quad_samples=128)
    good = importance.check_importance_sampling(q, model, sde, seed=1, **size)
    assert all(r.holds for r in good), good
    right = type(sde).importance_sample_t
    monkeypatch.setattr(type(sde), "importance_sample_t",
                        lambda self, key, shape=(), t_min=None, dtype=None: right(self, key, shape, 1e-2, dtype))
    _, quad = importance.check_importance_sampling(q, model, sde, seed=1, **size)
    assert not quad.holds and abs(quad.gap) > 6 * quad.stderr, quad


def test_estimator_moments_match_the_importance_sampled_draws():
    """importance.estimator_moments (quadrature over t, Monte Carlo over x₀ and ε) against an independent
    computation: the mean and sample variance of 40000 draws of the IS estimator (light-tailed, so its
    sample moments are reliable), each within 4 combined SE; the uniform-t estimator has the same mean."""
    from numerics.losses import dsm_loss

    q, _, sde, _ = _report_case()
    model = random_perturbation(q.score_fn(sde), sde, q.dim, 11, 0.3)
    mom = importance.estimator_moments(q, model, sde, seed=2, n_samples=512)
    v = np.asarray(dsm_loss(model, sde, q.sample(numerics_key(5), 40000), numerics_key(6), weighting="g2_is"))
    m, m_se = v.mean(), v.std(ddof=1) / math.sqrt(v.size)
    var, var_se = v.var(ddof=1), ((v - m) ** 2).std(ddof=1) / math.sqrt(v.size)
    is_ = mom["g2_is"]
    assert abs(is_["mean"] - m) < 4 * math.hypot(is_["mean_se"], m_se), (is_, m, m_se)
    assert abs(is_["var"] - var) < 4 * math.hypot(is_["second_moment_se"], var_se), (is_, var, var_se)
    assert mom["g2"]["mean"] == pytest.approx(is_["mean"], rel=1e-9) and mom["g2"]["var"] > 5 * is_["var"]


def _report_case():
    """The report's data/model mixtures, VP SDE and point: shapes shared with run_all's compiled code."""
    return cases.data_mixture(), cases.model_mixture(), CASE_SDES["vp"], jnp.array([0.4, 0.3])


def _scaled_time_grid(factor):
    """engine.time_grid with both weight vectors multiplied by ``factor`` (a quadrature bug)."""
    orig = engine.time_grid

    def grid(*args, **kw):
        g = orig(*args, **kw)
        return dataclasses.replace(g, w_g2=g.w_g2 * factor, w_dt=g.w_dt * factor)

    return grid


def _half_dropped(args, x_t, t, x0, eps, alpha, sigma):
    """score_gap_integrand without its ½ (a factor-2 bug in the KL dynamics' right side)."""
    a, b = args
    return jnp.sum(jnp.square(a(x_t, t) - b(x_t, t)))


def _tight_half_dropped(args, x_t, t, x0, eps, alpha, sigma):
    """song2021's tightness integrand with ‖s‖² instead of ½‖s‖²."""
    (model,) = args
    s = model(x_t, t)
    return jnp.sum(s**2) + engine.divergence(model, x_t, t)


@pytest.mark.parametrize("bug", ["time integral x1.5", "factor 1/2 dropped"])
def test_checks_detect_a_planted_bug(monkeypatch, bug):
    """Negative controls: each identity holds as written and FAILS (beyond its 3 SE) once a bug of
    the kind a derivation can make is planted in it — so a pass is evidence, not a foregone result."""
    q, p, sde, x = _report_case()
    good = (kl_dynamics.check_kl_dynamics(q, p, sde, n_samples=N_REPORT),
            song2021.check_theorem2_tight(q, sde, x, n_samples=N_REPORT))
    assert all(r.holds for r in good), good
    if bug == "time integral x1.5":
        monkeypatch.setattr(engine, "time_grid", _scaled_time_grid(1.5))
    else:
        monkeypatch.setattr(kl_dynamics, "score_gap_integrand", _half_dropped)
        monkeypatch.setattr(song2021, "_tight_integrand", _tight_half_dropped)
    bad = (kl_dynamics.check_kl_dynamics(q, p, sde, n_samples=N_REPORT),
           song2021.check_theorem2_tight(q, sde, x, n_samples=N_REPORT))
    for g, b in zip(good, bad):
        assert not b.holds, (bug, b)
        assert abs(b.gap) > 3 * b.stderr and b.stderr < 2 * g.stderr, (bug, g, b)


def test_check_standard_errors_are_calibrated():
    """The reported SE is the spread of the gap over independent runs: over 24 seeds, z = gap / SE of
    an exact identity has mean ≈ 0 and standard deviation ≈ 1 (an SE inflated or deflated 2× fails;
    measured: std 1.26 and 1.09 over 30 seeds at 128 paths)."""
    q, p, sde, x = _report_case()
    z = {"kl_dynamics": [], "song_thm2_tight": []}
    for seed in range(24):
        for r in (kl_dynamics.check_kl_dynamics(q, p, sde, seed=seed, n_samples=128),
                  song2021.check_theorem2_tight(q, sde, x, seed=seed, n_samples=128)):
            z[r.name].append(r.gap / r.stderr)
    for name, zs in z.items():
        zs = np.asarray(zs)
        assert abs(zs.mean()) < 4.0 / math.sqrt(zs.size), (name, zs)
        assert 0.5 < zs.std(ddof=1) < 2.0, (name, zs)


def test_engine_records_and_sample_counts():
    """engine.identity/inequality: the 3-SE rule on hand-made values; n_samples < 2 is refused."""
    assert engine.identity("x", "p", "e", 1.0, 1.0 + 2.9, 1.0).holds
    assert not engine.identity("x", "p", "e", 1.0, 1.0 + 3.1, 1.0).holds
    ineq = engine.inequality("x", "p", "e", 1.0 + 2.9, 1.0, 1.0)  # lhs ≤ rhs violated by 2.9 SE
    assert ineq.holds and not ineq.significant
    assert not engine.inequality("x", "p", "e", 1.0 + 3.1, 1.0, 1.0).holds
    assert engine.inequality("x", "p", "e", 1.0, 1.0 + 3.1, 1.0).significant
    assert not engine.identity("x", "p", "e", float("nan"), 1.0, 1.0).holds
    q, p, sde, _ = _report_case()
    for n in (1, 0, -3):  # (a float is refused too; in the tests jaxtyping's checker gets there first)
        with pytest.raises(ValueError, match="n_samples must be"):
            kl_dynamics.check_kl_dynamics(q, p, sde, n_samples=n)
    with pytest.raises(ValueError, match="n_samples must be at least 2"):
        cases.run_all(n_samples=1, log=None)


def test_report_main_small(tmp_path):
    from numerics import report

    rc = report.main(["--out", str(tmp_path), "--n-samples", str(N_REPORT), "--quiet"])
    import json

    data = json.loads((tmp_path / "report.json").read_text())
    assert len(data["results"]) >= 30
    assert (tmp_path / "report.md").read_text().startswith("# Bounds")
    failed = [r["name"] for r in data["results"] if not r["holds"]]
    assert rc == 0 and not failed, failed  # seed 0 at 256 paths: every check holds (as at the default 1024)
    names = {r["name"] for r in data["results"]}
    md = (tmp_path / "report.md").read_text()  # what python -m paper_figures puts into REPORT.md
    assert all(f"| {name} |" in md for name in names), sorted(n for n in names if f"| {n} |" not in md)
    assert {"ode_nll_exceeds_sde_bound", "lu_ode_kl_identity_mixture", "lu_sine_first_order_gap"} <= names
    demo = next(r for r in data["results"] if r["name"] == "ode_nll_exceeds_sde_bound")
    assert "demonstration" in demo["settings"] and demo["holds"] == (demo["gap"] > 3 * demo["stderr"])
    assert "yes (demo)" in (tmp_path / "report.md").read_text()



# --- the probability-flow ODE model on mixtures (numerics.checks.ode_model) ------------------------
# These run hundreds of adaptive ODE solves and gradients through them. Their cost is one compilation
# of the forward solve and one of its gradient (~15 s CPU together), shared with test_report_main_small:
# the cases come from cases.ode_case() (the report's shapes and SDE) and ode_model evaluates in chunks
# of fixed size, so every call hits the same compiled code. The property test is capped at 3 examples
# because each example still runs ~1000 gradient solves; its assertions are exact identities.


def test_ode_nll_exceeds_sde_bound_demo():
    """Lu+22's point against Song+21 Thm 2 on a mixture: the ODE model's NLL exceeds the SDE bound
    (a demonstration record: holds ⇔ beyond 3 SE); exact score ⇒ ODE NLL = −log q_ε and the
    ε-conditioned DSM bound = −log q_ε (independent truth: the exact mixture density)."""
    q, sde, demo_model, _, x = cases.ode_case()
    demo, ident_ode, tight = song2021.check_ode_nll_vs_sde_bound(q, demo_model, sde, x, n_samples=max(64, N_REPORT // 4))
    assert demo.kind == "inequality" and "demonstration" in demo.settings
    assert demo.holds and demo.gap > 3 * demo.stderr and demo.settings["n_points_violated_3se"] >= 1
    np.testing.assert_allclose(demo.settings["nll_true_q"], -np.asarray(q.diffuse(sde, sde.t_min).log_prob(x)), rtol=1e-12)
    _assert(ident_ode)
    _assert(tight)
    # the SM and DSM forms of the same bound agree per point (Stein), within 3 SE
    s = demo.settings
    assert np.all(np.abs(s["bound_sm"] - s["bound_dsm"]) <= 3 * np.hypot(s["bound_sm_se"], s["bound_dsm_se"]) + 1e-9)


@settings(max_examples=3)  # each example: ~1000 ODE solves and gradients through them (see above)
@given(data_mixtures(), st.integers(0, 2**20))
def test_ode_model_exact_identities_mixture(q, seed):
    """Random mixtures: exact score ⇒ ∇log p_t^ODE = ∇log q_t (1e-6), −log p^ODE_ε = −log q_ε (1e-6),
    the ε-conditioned DSM bound is tight, and (3.1) holds with J_ODE = 0 (KL(q_ε‖p^ODE) = KL(q_T‖π))."""
    sde = CASE_SDES["vp"] if not BROAD else VPSDE(t_min=1e-3)
    x = q.diffuse(sde, sde.t_min).sample(numerics_key(seed), 8)
    model = random_perturbation(q.score_fn(sde), sde, q.dim, seed, 0.3)
    _, ident_ode, tight = song2021.check_ode_nll_vs_sde_bound(q, model, sde, x, seed=seed, n_samples=max(64, N_REPORT // 4))
    _assert(ident_ode)
    _assert(tight)
    _assert(lu2022.check_ode_model_score_exact(q, sde, seed=seed))
    ident, _, _ = lu2022.check_lu_mixture(q, ode_model.exact_as_perturbed(q, sde), sde, seed=seed,
                                          n_samples=max(256, N_REPORT), n_paths=64)
    _assert(ident)
    assert ident.settings["J_ODE"] == 0.0 and ident.settings["J_SM"] == 0.0


def test_lu_mixture_report_case():
    """(3.1) on a mixture with a perturbed (non-gradient) model, Cauchy–Schwarz, and the first-order gap."""
    q, sde, _, lu_model, _ = cases.ode_case()
    ident, cs, gap = lu2022.check_lu_mixture(q, lu_model, sde, n_samples=max(256, N_REPORT), n_paths=64)
    _assert(ident)
    _assert(cs)
    assert gap.holds and "demonstration" in gap.settings and ident.settings["J_Diff"] > 3 * ident.settings["J_Diff_se"]


def test_high_order_sine_report_case():
    """s = ∇log q + (a/ω) sin(ωx) on the report's mixture (VP: c_t = 1): J_SM → 0 like 1/ω² while the
    ODE KL gap persists; the error integrals against their closed forms at ω = 16, where E sin²(ωx) = ½
    up to e^{−2ω² v_min} < 1e-10: δ_1² = (a/ω)² D/4 ∫g², δ_2² = a² D/4 ∫g², δ_3² = (aω)² D/4 ∫g²."""
    q, sde, _, _, _ = cases.ode_case()
    a, omegas = cases.ODE_SINE_A, cases.ODE_SINE_OMEGAS
    rs = lu2022.check_high_order_sine(q, sde, a=a, omegas=omegas, n_samples=max(256, N_REPORT // 2), n_paths=64)
    for r in rs:
        _assert(r)
    s = rs[0].settings
    int_g2 = float(sde.integrated_beta(sde.T) - sde.integrated_beta(sde.t_min))
    w = omegas[-1]
    base = q.dim / 4 * int_g2
    for key, target in (("J_SM", (a / w) ** 2 * base), ("delta2_sq", a**2 * base), ("delta3_sq", (a * w) ** 2 * base)):
        val, se = s[key][-1], s[key + "_se"][-1]
        assert abs(val - target) < 3 * se + 1e-3 * target, (key, val, target, se)
    assert np.all(np.diff(s["J_SM"]) < 0) and s["KL_gap"][-1] > 10 * s["J_SM"][-1]


@pytest.mark.parametrize("rho", [0.9, 0.0, -0.5])
def test_paired_ratio_standard_error_is_the_delta_method_closed_form(rho):
    """engine.paired_ratio on correlated normal pairs (a, b), means (3, 2), sds (1, 0.5), correlation ρ, offset
    c = 1: its SE equals the delta method's closed form √[(σ_a² − 2rρσ_aσ_b + r²σ_b²)/n]/(μ_b − c) at the true
    parameters (r = 2) within 5% at n = 40 000, and the SE spread of r over 200 replications agrees with it —
    the positive correlation of common random numbers narrows it (the J_SM ratio of lu_sine_gap_outlasts_first_order)."""
    rng = np.random.default_rng(1)
    n, c, sa, sb = 40_000, 1.0, 1.0, 0.5
    cov = [[sa**2, rho * sa * sb], [rho * sa * sb, sb**2]]
    a, b = rng.multivariate_normal([3.0, 2.0], cov, size=n).T
    r, se = engine.paired_ratio(a, b, offset=c)
    r_true = (3.0 - c) / (2.0 - c)
    closed = math.sqrt((sa**2 - 2 * r_true * rho * sa * sb + r_true**2 * sb**2) / n) / (2.0 - c)
    assert abs(r - r_true) < 4 * closed
    assert se == pytest.approx(closed, rel=0.05)
    reps = [engine.paired_ratio(*rng.multivariate_normal([3.0, 2.0], cov, size=2000).T, offset=c)[0] for _ in range(200)]
    assert np.std(reps, ddof=1) == pytest.approx(closed * math.sqrt(n / 2000), rel=0.15)
