"""Built-in cases of ``python -m numerics report``: fixed mixtures, SDEs and models.

``run_all(n_samples=…)`` runs every check once on these cases and returns the list of
:class:`~numerics.checks.engine.CheckResult`. Sizes scale with ``n_samples`` (paths per MC check).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from numerics.checks import engine, importance, kl_dynamics, li_yan2024, lu2022, song2021, vdm
from numerics.checks.affine import AffineModel
from numerics.checks.models import random_perturbation
from numerics.memory_maps import release_compiled_programs
from numerics.mixture import GaussianMixture
from numerics.sde import VPSDE, CosineGamma, LinearGamma, LogSNRSDE, SubVPSDE, VESDE

__all__ = ["data_mixture", "model_mixture", "ode_case", "run_all"]


def data_mixture() -> GaussianMixture:
    """2-D, 3 components, anisotropic."""
    rot = lambda a: np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    covs = np.stack([rot(a) @ np.diag(d) @ rot(a).T for a, d in ((0.3, (0.3, 0.05)), (1.2, (0.2, 0.1)), (2.0, (0.4, 0.2)))])
    return GaussianMixture([0.3, 0.3, 0.4], [[-1.0, 0.5], [1.0, -0.5], [0.0, 1.2]], covs)


def model_mixture() -> GaussianMixture:
    return GaussianMixture.from_diagonal([0.5, 0.5], [[-0.8, 0.3], [0.7, 0.2]], [[0.4, 0.3], [0.5, 0.4]])


GAUSS_MU = np.array([0.7, -0.3])
GAUSS_S2 = np.array([0.16, 0.5])


ODE_SINE_A = 0.5
ODE_SINE_OMEGAS = (1.0, 2.0, 4.0, 8.0, 16.0)


def ode_case():
    """(q, VP SDE, perturbed model for the Thm 2 demonstration, perturbed model for Lu's (3.1), points x)
    of the ODE-model checks — shared by the report and the tests (same shapes: compiled once)."""
    q, vp = data_mixture(), VPSDE(t_min=1e-3)
    demo_model = random_perturbation(q.score_fn(vp), vp, q.dim, 7, 0.3)
    lu_model = random_perturbation(q.score_fn(vp), vp, q.dim, 7, 0.1)
    x = q.diffuse(vp, vp.t_min).sample(jax.random.PRNGKey(3), 8)
    return q, vp, demo_model, lu_model, x


def run_all(n_samples: int = 1024, seed: int = 0, log=print):
    engine.check_n_samples(n_samples)
    q, p = data_mixture(), model_mixture()
    x_pt = jnp.array([0.4, 0.3])
    results = []

    def add(label, fn):
        release_compiled_programs(context=f"the checks before {label!r}")  # numerics.memory_maps
        t0 = time.perf_counter()
        out = fn()
        out = out if isinstance(out, list) else [out]
        for r in out:
            r.settings["case"] = label
            r.settings["seconds"] = round(time.perf_counter() - t0, 2)
        results.extend(out)
        if log:
            log(f"  {label}: {len(out)} check(s) in {time.perf_counter() - t0:.1f}s")

    vp, subvp, ve = VPSDE(t_min=1e-3), SubVPSDE(), VESDE(t_min=1e-3)
    pert = {s: random_perturbation(q.score_fn(s), s, q.dim, seed + 7, 0.3) for s in (vp, ve)}
    ex_aff = AffineModel(jnp.asarray(GAUSS_MU), jnp.asarray(GAUSS_S2), jnp.zeros(2), jnp.zeros(2))
    bad_aff = AffineModel(jnp.asarray(GAUSS_MU), jnp.asarray(GAUSS_S2), jnp.array([0.2, -0.1]), jnp.array([0.5, 0.5]))

    # 1. KL dynamics
    for s in (vp, ve):
        add(f"kl_dynamics {type(s).__name__}", lambda s=s: kl_dynamics.check_kl_dynamics(q, p, s, seed=seed, n_samples=n_samples))
    # 2. Song Thm 1
    add("thm1 affine perturbed VP", lambda: song2021.check_theorem1_affine(GAUSS_MU, GAUSS_S2, bad_aff, vp))
    add("thm1 affine exact, pi=q_T", lambda: song2021.check_theorem1_affine(GAUSS_MU, GAUSS_S2, ex_aff, vp, prior="exact"))
    add("thm1 affine exact VE", lambda: song2021.check_theorem1_affine(GAUSS_MU, GAUSS_S2, ex_aff, ve))
    add("DSM constant (perturbed, VP)", lambda: song2021.check_dsm_constant(q, pert[vp], vp, seed=seed, n_samples=n_samples)[0])
    # 3. Song Thm 2
    add("thm2 SM=DSM (perturbed, VP)", lambda: song2021.check_theorem2_stein(q, pert[vp], vp, x_pt, seed=seed, n_samples=n_samples))
    add("thm2 tight (exact, sub-VP)", lambda: song2021.check_theorem2_tight(q, subvp, x_pt, seed=seed, n_samples=n_samples))
    add("thm2 pointwise affine", lambda: song2021.check_theorem2_affine(GAUSS_MU, GAUSS_S2, bad_aff, vp, np.array([1.5, 0.5])))
    add("eps-offset bound exact VP", lambda: song2021.check_eps_offset_bound(q, q.score_fn(vp), vp, seed=seed, n_samples=n_samples))
    add("eps-offset bound perturbed VP", lambda: song2021.check_eps_offset_bound(q, pert[vp], vp, seed=seed, n_samples=n_samples))
    add("ODE NLL vs SDE bound (affine)", lambda: song2021.check_ode_vs_sde_bound_affine(GAUSS_MU, GAUSS_S2, bad_aff, vp))
    # 4. Lu
    add("Lu affine VP", lambda: lu2022.check_lu_affine(GAUSS_MU, GAUSS_S2, bad_aff, vp))
    add("Lu 2nd order", lambda: lu2022.check_second_order_minimiser(q, vp, seed=seed))
    add("Lu 3rd order", lambda: lu2022.check_third_order_minimiser(q, vp, seed=seed))
    # 5. VDM
    lin, cos = LogSNRSDE(LinearGamma()), LogSNRSDE(CosineGamma())
    nv = max(64, n_samples // 4)
    add("VDM L_T monotone", lambda: vdm.check_vdm_monotone(q, lin, T_list=(1, 4, 16, 64), seed=seed, n_samples=nv))
    add("VDM schedule invariance", lambda: vdm.check_vdm_schedule_invariance(q, lin, cos, seed=seed, n_samples=nv))
    add("VDM VP = VE rescaling", lambda: vdm.check_vdm_vp_ve_invariance(q, VESDE(kernel="score_sde"), seed=seed, n_samples=nv))
    pl = random_perturbation(q.score_fn(lin), lin, q.dim, seed + 7, 0.3)
    add("VDM perturbed >= exact", lambda: vdm.check_vdm_perturbed(q, lin, pl, seed=seed, n_samples=nv))
    add("VDM = Song DSM", lambda: vdm.check_vdm_song(q, lin, pl, seed=seed, n_samples=nv))
    # 6. Li & Yan
    add("L&Y density formula", lambda: li_yan2024.check_density_formula(q, x_pt, seed=seed, n_samples=max(128, n_samples // 2)))
    add("L&Y DDPM formula", lambda: li_yan2024.check_ddpm_formula(q, x_pt, seed=seed, n_samples=max(64, n_samples // 4)))
    add("L&Y ELBO vs NLL minimiser", lambda: li_yan2024.check_elbo_minimiser(q))
    # 7. IS
    add("IS vs uniform t", lambda: importance.check_importance_sampling(q, pert[vp], vp, seed=seed, n_samples=20 * n_samples,
                                                                        n_quad_samples=max(128, n_samples // 2)))
    # 8. the probability-flow ODE model on mixtures (numerics.likelihood; compiled once, see ode_model)
    oq, ovp, demo_model, lu_model, x_pts = ode_case()
    add("ODE NLL vs Thm 2 bound (mixture)", lambda: song2021.check_ode_nll_vs_sde_bound(
        oq, demo_model, ovp, x_pts, seed=seed, n_samples=max(64, n_samples // 4)))
    add("Lu ODE-model score, exact (mixture)", lambda: lu2022.check_ode_model_score_exact(oq, ovp, seed=seed))
    add("Lu (3.1), CS, 1st-order gap (mixture)", lambda: lu2022.check_lu_mixture(
        oq, lu_model, ovp, seed=seed, n_samples=max(256, n_samples), n_paths=64))
    add("Lu high orders, sine model (mixture)", lambda: lu2022.check_high_order_sine(
        oq, ovp, a=ODE_SINE_A, omegas=ODE_SINE_OMEGAS, seed=seed, n_samples=max(256, n_samples // 2), n_paths=64))
    return results
