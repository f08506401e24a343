"""Kingma, Salimans, Poole & Ho 2021, *Variational Diffusion Models* (THEORY.md §4).

Diffusion losses of a denoiser x̂_θ(z_t; t) = (z_t + σ_t² s_θ(z_t, t))/α_t (Tweedie form of a score
model; the exact denoiser is E[x | z_t] for the exact mixture score):

    L_T(x) = ½ Σ_{i=1}^T E_ε[(SNR(s(i)) − SNR(t(i))) ‖x − x̂_θ(z_t(i); t(i))‖²]      (VDM Eq. 13)
    L_∞(x) = −½ ∫_0^1 SNR'(t) E_ε‖x − x̂_θ(z_t; t)‖² dt                            (VDM Eq. 17)

L_T by Monte Carlo (independent ε per step); L_∞ by Gauss–Legendre in t (8 panels × 16 nodes,
*not* in log-SNR, so that different schedules use different nodes) with independent ε per node.
All expectations are also over x ~ q_0 (the ordering L_T ≥ L_2T ≥ L_∞ is a statement about the
optimal denoiser's mmse(SNR), which is monotone on average over x, not necessarily per x).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from numerics.checks import engine
from numerics.checks.engine import CheckResult
from numerics.losses import dsm_loss_terms
from numerics.mixture import GaussianMixture
from numerics.sde import LogSNRSDE

__all__ = ["diffusion_losses", "check_vdm_monotone", "check_vdm_schedule_invariance", "check_vdm_song",
           "check_vdm_perturbed"]

PAPER = "VDM"


def _snr_integrand(args, z, t, x0, eps, alpha, sigma):
    """‖x − x̂(z; t)‖² with x̂ = (z + σ² s)/α."""
    (model,) = args
    x_hat = (z + sigma**2 * model(z, t)) / alpha
    return jnp.sum(jnp.square(x0 - x_hat))


def _l_inf_paths(sde: LogSNRSDE, model, x0, key, n_panels=8, order=16):
    t, w = engine.gauss_legendre(0.0, float(sde.T), n_panels, order)
    alpha, sigma, _, _ = engine.grid_coeffs(sde, t)
    dsnr = -np.asarray(sde.log_snr_derivative(jnp.asarray(t))) * np.exp(np.asarray(sde.log_snr(jnp.asarray(t))))
    eps = engine.path_noise(key, x0.shape[0], t.size, x0.shape[1])
    vals = engine.eval_on_paths(_snr_integrand, (model,), x0, eps, t, alpha, sigma)
    return 0.5 * vals @ jnp.asarray(w * dsnr), (t, w, eps)


def _l_T_paths(sde: LogSNRSDE, model, x0, key, T_steps: int):
    i = np.arange(1, T_steps + 1)
    t = i / T_steps * float(sde.T)
    s = (i - 1) / T_steps * float(sde.T)
    snr_s = np.exp(np.asarray(sde.log_snr(jnp.asarray(s))))
    snr_t = np.exp(np.asarray(sde.log_snr(jnp.asarray(t))))
    alpha, sigma, _, _ = engine.grid_coeffs(sde, t)
    eps = engine.path_noise(key, x0.shape[0], t.size, x0.shape[1])
    vals = engine.eval_on_paths(_snr_integrand, (model,), x0, eps, t, alpha, sigma)
    return 0.5 * vals @ jnp.asarray(snr_s - snr_t)


def diffusion_losses(q: GaussianMixture, sde: LogSNRSDE, model, *, T_list=(1, 4, 16, 64, 256), seed: int = 0,
                     n_samples: int = 512):
    """Per-sample L_T (for each T in ``T_list``) and L_∞ on common x₀ ~ q_0: dict T → (N,), 'inf' → (N,)."""
    key = engine.key_from_seed(seed)
    keys = jax.random.split(key, len(T_list) + 2)
    x0 = q.sample(keys[0], n_samples)
    out = {T: _l_T_paths(sde, model, x0, keys[2 + j], T) for j, T in enumerate(T_list)}
    out["inf"] = _l_inf_paths(sde, model, x0, keys[1])[0]
    return out


def check_vdm_monotone(q: GaussianMixture, sde: LogSNRSDE, *, T_list=(1, 4, 16, 64, 256), seed: int = 0,
                       n_samples: int = 512) -> list[CheckResult]:
    """VDM §3.4/App. (THEORY.md §4.5): with the exact denoiser, E_x L_{T'} ≤ E_x L_T for T' > T and
    E_x L_∞ ≤ E_x L_T (inequalities, paired MC SE)."""
    model = q.score_fn(sde)
    L = diffusion_losses(q, sde, model, T_list=T_list, seed=seed, n_samples=n_samples)
    res = []
    keys = list(T_list) + ["inf"]
    for a, b in zip(keys[:-1], keys[1:]):
        lo, hi, se = engine.paired(L[b], L[a])
        res.append(engine.inequality(
            f"vdm_L{b}_le_L{a}", PAPER, f"L_{b} <= L_{a} (exact denoiser)", lo, hi, se,
            settings=dict(D=q.dim, K=q.n_components, n_samples=n_samples,
                          L_values={str(k): engine.mc_mean(L[k]) for k in keys}),
        ))
    return res


def check_vdm_perturbed(q: GaussianMixture, sde: LogSNRSDE, model, *, seed: int = 0, n_samples: int = 512) -> CheckResult:
    """VDM / Song+21 Eq. 2.2: E_x L_∞(exact denoiser) ≤ E_x L_∞(θ) (the excess is J_SM(θ; g²) ≥ 0)."""
    key = engine.key_from_seed(seed)
    k0, k1 = jax.random.split(key)
    x0 = q.sample(k0, n_samples)
    l_ex, _ = _l_inf_paths(sde, q.score_fn(sde), x0, k1)
    l_th, _ = _l_inf_paths(sde, model, x0, k1)  # same noise: CRN
    lo, hi, se = engine.paired(l_ex, l_th)
    return engine.inequality("vdm_Linf_exact_le_perturbed", PAPER, "L_inf(exact) <= L_inf(theta)", lo, hi, se,
                             settings=dict(D=q.dim, K=q.n_components, n_samples=n_samples))


def check_vdm_schedule_invariance(q: GaussianMixture, sde_a: LogSNRSDE, sde_b: LogSNRSDE, *, seed: int = 0,
                                  n_samples: int = 512) -> CheckResult:
    """VDM Eq. 18 (THEORY.md §4.4): L_∞ depends on the schedule only through SNR_min, SNR_max.
    Two schedules with equal endpoints, exact denoisers, t-quadrature (different nodes), CRN in x₀.
    Also reports VDM's t ~ U(0, 1) single-sample estimator ½γ'‖ε − ε̂‖² (mean, variance) per schedule."""
    for s in (sde_a, sde_b):
        if not isinstance(s, LogSNRSDE):
            raise TypeError("schedule invariance compares two LogSNRSDE (VDM γ) schedules.")
    ends = [float(s.log_snr(jnp.asarray(x))) for s in (sde_a, sde_b) for x in (0.0, 1.0)]
    key = engine.key_from_seed(seed)
    k0, k1, k2, k3 = jax.random.split(key, 4)
    x0 = q.sample(k0, n_samples)
    la, _ = _l_inf_paths(sde_a, q.score_fn(sde_a), x0, k1)
    lb, _ = _l_inf_paths(sde_b, q.score_fn(sde_b), x0, k2)
    a, b, se = engine.paired(la, lb)
    mc = {}
    for name, s in (("a", sde_a), ("b", sde_b)):
        t = jax.random.uniform(k3, (n_samples,), dtype=jnp.float64)
        eps = jax.random.normal(jax.random.fold_in(k3, 1), x0.shape, dtype=jnp.float64)
        v = dsm_loss_terms(q.score_fn(s), s, x0, t, eps, "g2")  # = ½γ'‖ε − ε̂‖²  (T − t_min = 1)
        mc[name] = dict(mean=float(v.mean()), se=engine.mc_mean(v)[1], var=float(v.var()))
    return engine.identity(
        "vdm_Linf_schedule_invariance", PAPER, "Eq. 18: L_inf(gamma_a) = L_inf(gamma_b) for equal endpoints",
        a, b, se, atol=1e-9,
        settings=dict(gamma_a=repr(sde_a.gamma), gamma_b=repr(sde_b.gamma), log_snr_endpoints=ends,
                      D=q.dim, K=q.n_components, n_samples=n_samples, vdm_uniform_t_estimator=mc),
    )


def _song_integrand(args, z, t, x0, eps, alpha, sigma):
    (model,) = args
    return 0.5 * jnp.sum(jnp.square(model(z, t) + eps / sigma))


def check_vdm_song(q: GaussianMixture, sde: LogSNRSDE, model, *, seed: int = 0, n_samples: int = 256) -> CheckResult:
    """THEORY.md §4.7: VDM's L_∞ (SNR form, −½∫SNR'‖x − x̂‖² dt) equals Song's likelihood-weighted
    DSM term ½∫g² E‖s_θ + ε/σ‖² dt of the matching SDE (computed by numerics.losses.dsm_loss_terms,
    weighting "g2"), on the same nodes and noise: an algebraic identity per sample."""
    key = engine.key_from_seed(seed)
    k0, k1 = jax.random.split(key)
    x0 = q.sample(k0, n_samples)
    l_vdm, (t, w, eps) = _l_inf_paths(sde, model, x0, k1)
    n, m = n_samples, t.size
    vals = dsm_loss_terms(model, sde, jnp.repeat(x0, m, 0), jnp.tile(jnp.asarray(t), n), eps.reshape(n * m, -1), "g2")
    l_song = vals.reshape(n, m) @ jnp.asarray(w / (float(sde.T) - float(sde.t_min)))
    a, b, se = engine.paired(l_vdm, l_song)
    scale = max(1.0, abs(a))
    return engine.identity("vdm_Linf_eq_song_dsm", PAPER + " / Song+21", "L_inf = 1/2 int g^2 E||s + eps/sigma||^2 dt",
                           a, b, se, atol=1e-9 * scale, settings=dict(D=q.dim, n_samples=n_samples, nodes=m))


def gaussian_l_inf(x, mu, s2, snr_min: float, snr_max: float):
    """Closed-form L_∞(x) for data N(μ, diag s2) and the exact denoiser (THEORY.md §4.5), summed over dims."""
    x, mu, s2 = (np.asarray(z, dtype=np.float64) for z in (x, mu, s2))
    a = 1.0 / (1.0 + snr_min * s2) - 1.0 / (1.0 + snr_max * s2)
    return float(np.sum(0.5 * ((x - mu) ** 2 / s2 * a + np.log((1 + snr_max * s2) / (1 + snr_min * s2)) - a)))
