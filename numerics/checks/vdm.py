"""Kingma, Salimans, Poole & Ho 2021, *Variational Diffusion Models* (THEORY.md §4).

The diffusion losses are the library's, :mod:`numerics.vdm` (the code training uses), for the noise
prediction ε̂(z_t, t) = −σ_t s_θ(z_t, t) of a score model (the exact denoiser for the exact mixture
score), on [t_min, T] of the SDE:

    L_T(x) = (T/2) E_{i, ε}[expm1(γ(t_i) − γ(s_i)) ‖ε − ε̂(z_{t_i}; t_i)‖²]        (VDM Eq. 13, ε form)
    L_∞(x) = ½ ∫_{t_min}^T γ'(t) E_ε‖ε − ε̂(z_t; t)‖² dt                          (VDM Eq. 17, ε form)

Here they are evaluated without Monte Carlo over time: L_T by :func:`numerics.vdm.discrete_diffusion_loss`
at one time inside each of the T steps (so every step i enters once, with weight 1/T), L_∞ by
:func:`numerics.vdm.continuous_diffusion_loss` at Gauss–Legendre nodes in t (8 panels × 16 nodes,
*not* in log-SNR, so that different schedules use different nodes); independent ε per step/node
(the schedule-invariance check: one ε per path, see :func:`common_path_losses`),
Monte Carlo over x ~ q_0 (the ordering L_T ≥ L_2T ≥ L_∞ is a statement about the optimal denoiser's
mmse(SNR), which is monotone on average over x, not necessarily per x).

**Independent test target.** :func:`check_vdm_song` compares the library's L_∞ with VDM's *SNR form*
of Eq. 17, −½∫ SNR'(t) E‖x − x̂_θ(z_t; t)‖² dt with the Tweedie denoiser x̂_θ = (z_t + σ_t² s_θ)/α_t
(:func:`_snr_form_integrand`). That form is written here on purpose, as the target the library is
tested against, not as a second implementation: it is a different expression (data-space error,
weight −SNR') whose equality with the ε form (weight γ' = g²/σ², i.e. Song's likelihood-weighted DSM,
THEORY.md §4.7) is the identity under test. :func:`gaussian_l_inf` is the closed form of THEORY.md §4.5.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from numerics.checks import engine
from numerics.checks.engine import CheckResult
from numerics.mixture import GaussianMixture
from numerics.sde import SDE, LinearGamma, LogSNRSDE
from numerics.vdm import continuous_diffusion_loss, diffusion_loss

__all__ = ["diffusion_losses", "check_vdm_monotone", "check_vdm_schedule_invariance", "schedule_invariance",
           "common_path_losses", "check_vdm_vp_ve_invariance", "vp_with_snr_of",
           "check_vdm_song", "check_vdm_perturbed", "gaussian_l_inf"]

PAPER = "VDM"


class _NoisePrediction(eqx.Module):
    """ε̂(z, t) = −σ_t s(z, t): a score model as the noise prediction :mod:`numerics.vdm` takes."""

    score: Callable
    sde: SDE

    def __call__(self, z, t):
        return -self.sde.std(t) * self.score(z, t)


def _library_integrand(args, z, t, x0, eps, alpha, sigma):
    """``numerics.vdm.diffusion_loss`` (L_∞ for n_steps = 0, else L_T) for one path x0 and node t with
    noise ε; the library forms z_t itself (the engine's z, α, σ are not used)."""
    eps_model, sde, n_steps = args
    return diffusion_loss(eps_model, sde, x0[None], t[None], eps[None], n_steps)[0]


def _snr_form_integrand(args, z, t, x0, eps, alpha, sigma):
    """Test target (VDM Eq. 17, SNR form): ‖x − x̂(z; t)‖² with x̂ = (z + σ² s)/α, z = αx + σε."""
    (model,) = args
    x_hat = (z + sigma**2 * model(z, t)) / alpha
    return jnp.sum(jnp.square(x0 - x_hat))


def _l_inf_paths(sde: SDE, model, x0, key, n_panels=8, order=16, *, common_noise: bool = False):
    """Per-path L_∞ = Σ_j w_j/(T − t_min) · continuous_diffusion_loss(t_j) on Gauss–Legendre nodes t_j in t
    on [t_min, T], and (t, w, ε). Independent ε per node (ε of shape (N, nodes, D)), or with
    ``common_noise`` one ε per path at every node (N, D): each path's value is then the t-integral of one
    smooth function, z_t = α_t x₀ + σ_t ε, a quadrature with no Monte Carlo along t, which is the
    variable change of VDM Eq. 18 path by path (:func:`check_vdm_schedule_invariance`)."""
    t, w = engine.gauss_legendre(float(sde.t_min), float(sde.T), n_panels, order)
    alpha, sigma, _, _ = engine.grid_coeffs(sde, t)
    if common_noise:
        eps = jax.random.normal(key, x0.shape, dtype=jnp.float64)
    else:
        eps = engine.path_noise(key, x0.shape[0], t.size, x0.shape[1])
    vals = engine.eval_on_paths(_library_integrand, (_NoisePrediction(model, sde), sde, 0), x0, eps, t, alpha, sigma)
    return vals @ jnp.asarray(w / (float(sde.T) - float(sde.t_min))), (t, w, eps)


def _l_T_paths(sde: LogSNRSDE, model, x0, key, T_steps: int):
    """Per-path L_T = (1/T) Σ_i discrete_diffusion_loss(t) at the midpoint t of step i, which the
    library rounds up to t_i = t_min + i h (midpoints: no rounding at the grid points themselves)."""
    h = (float(sde.T) - float(sde.t_min)) / T_steps
    t = float(sde.t_min) + (np.arange(1, T_steps + 1) - 0.5) * h
    alpha, sigma, _, _ = engine.grid_coeffs(sde, t)
    eps = engine.path_noise(key, x0.shape[0], t.size, x0.shape[1])
    vals = engine.eval_on_paths(_library_integrand, (_NoisePrediction(model, sde), sde, int(T_steps)), x0, eps, t,
                                alpha, sigma)
    return jnp.mean(vals, axis=1)


def diffusion_losses(q: GaussianMixture, sde: LogSNRSDE, model, *, T_list=(1, 4, 16, 64, 256), seed: int = 0,
                     n_samples: int = 512):
    """Per-sample L_T (for each T in ``T_list``) and L_∞ on common x₀ ~ q_0, by :mod:`numerics.vdm` for
    the score ``model``: dict T → (N,), 'inf' → (N,)."""
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
    """VDM / Song+21 Eq. 2.2: E_x L_∞(exact denoiser) ≤ E_x L_∞(θ) (the excess is J_SM(θ; g²) ≥ 0);
    library L_∞ on common x₀ and noise (paired SE)."""
    key = engine.key_from_seed(seed)
    k0, k1 = jax.random.split(key)
    x0 = q.sample(k0, n_samples)
    l_ex, _ = _l_inf_paths(sde, q.score_fn(sde), x0, k1)
    l_th, _ = _l_inf_paths(sde, model, x0, k1)  # same noise: CRN
    lo, hi, se = engine.paired(l_ex, l_th)
    return engine.inequality("vdm_Linf_exact_le_perturbed", PAPER, "L_inf(exact) <= L_inf(theta)", lo, hi, se,
                             settings=dict(D=q.dim, K=q.n_components, n_samples=n_samples))


INVARIANCE_QUADRATURE = (32, 16)
"""Panels × Gauss–Legendre order in t of :func:`common_path_losses`: on the report's data mixture the
linear, cosine and figure 4's monotone-network schedules then agree to 4e-14 per path (16 panels: 1e-7)."""


def common_path_losses(q: GaussianMixture, sdes: dict, *, seed: int = 0, n_samples: int = 512) -> tuple:
    """Per-path L_∞ (VDM Eq. 17, exact denoiser) under each process of ``sdes`` (name → SDE), all on
    the same paths: x₀ ~ q_0 and one ε per path, z_t = α_t x₀ + σ_t ε at every node (``common_noise``).
    Each value is then a t-quadrature of one smooth function (:data:`INVARIANCE_QUADRATURE`), whose change of
    variables to v = SNR(t) is VDM Eq. 18's: for equal endpoints the values agree path by path, to the
    quadrature's accuracy. Returns x₀ (N, D) and name → (N,)."""
    key = engine.key_from_seed(seed)
    k0, k1 = jax.random.split(key)
    x0 = q.sample(k0, n_samples)
    return x0, {name: _l_inf_paths(s, q.score_fn(s), x0, k1, *INVARIANCE_QUADRATURE, common_noise=True)[0]
                for name, s in sdes.items()}


def check_vdm_schedule_invariance(q: GaussianMixture, sde_a: LogSNRSDE, sde_b: LogSNRSDE, *, seed: int = 0,
                                  n_samples: int = 512) -> CheckResult:
    """VDM Eq. 18 (THEORY.md §4.4, §8 item 19): L_∞ depends on the schedule only through SNR_min, SNR_max.
    Two schedules, exact denoisers, library L_∞ by t-quadrature on the same (x₀, ε) paths
    (:func:`common_path_losses`; the nodes differ in log-SNR): for equal endpoints the per-path values are
    equal up to quadrature error, checked to 1e-8·max(1, |L_∞|) (THEORY's "quadrature 1e-8"), far below
    the Monte-Carlo SE of L_∞ itself (recorded as ``L_inf_mc_se``). Also reports VDM's single-sample
    estimator (T − t_min)·½γ'(t)‖ε − ε̂‖², t ~ U[t_min, T] (:func:`numerics.vdm.continuous_diffusion_loss`;
    mean, SE, variance) per schedule."""
    for s in (sde_a, sde_b):
        if not isinstance(s, LogSNRSDE):
            raise TypeError("schedule invariance compares two LogSNRSDE (VDM γ) schedules.")
    ends = [float(s.log_snr(jnp.asarray(x))) for s in (sde_a, sde_b) for x in (0.0, 1.0)]
    x0, L = common_path_losses(q, {"a": sde_a, "b": sde_b}, seed=seed, n_samples=n_samples)
    key = jax.random.fold_in(engine.key_from_seed(seed), 3)
    mc = {}
    for name, s in (("a", sde_a), ("b", sde_b)):
        t = s.t_min + (s.T - s.t_min) * jax.random.uniform(key, (n_samples,), dtype=jnp.float64)
        eps = jax.random.normal(jax.random.fold_in(key, 1), x0.shape, dtype=jnp.float64)
        # VDM's estimator (T − t_min)·½γ'(t)‖ε − ε̂‖², t ~ U[t_min, T]
        v = continuous_diffusion_loss(_NoisePrediction(q.score_fn(s), s), s, x0, t, eps)
        mc[name] = dict(mean=float(v.mean()), se=engine.mc_mean(v)[1], var=float(v.var()))
    return schedule_invariance(L["a"], L["b"], settings=dict(
        gamma_a=repr(sde_a.gamma), gamma_b=repr(sde_b.gamma), log_snr_endpoints=ends, D=q.dim, K=q.n_components,
        n_samples=n_samples, vdm_uniform_t_estimator=mc))


def vp_with_snr_of(ve: SDE) -> LogSNRSDE:
    """The VP process (LogSNRSDE, same t_min and T) with ``ve``'s SNR(t) at every t, for a ``ve`` whose
    γ = −log SNR is linear in t (ValueError otherwise): :func:`check_vdm_vp_ve_invariance`."""
    gamma = lambda s: -float(ve.log_snr(jnp.asarray(float(s))))  # noqa: E731
    t0, t1 = float(ve.t_min), float(ve.T)
    mid = gamma(0.5 * (t0 + t1))
    if not math.isclose(mid, 0.5 * (gamma(t0) + gamma(t1)), rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(f"ve: its γ = −log SNR is not linear in t ({type(ve).__name__}); the quadrature in t "
                         "resolves the two processes only then: use VESDE(kernel='score_sde').")
    # the VP process with the same SNR(t) at every t of [t_min, T]: γ linear through ve's γ(0) and γ(T)
    vp = LogSNRSDE(LinearGamma(gamma(0.0), gamma(0.0) + (gamma(t1) - gamma(0.0)) / t1), t_min=t0, T=t1)
    return vp


def check_vdm_vp_ve_invariance(q: GaussianMixture, ve: SDE, *, seed: int = 0, n_samples: int = 512) -> CheckResult:
    """THEORY.md §4.4 and §8 item 19 (second part): L_∞ is unchanged under the rescaling between a VP and
    a VE process with the same SNR function, z^VE = z^VP/α (the exact denoiser of each in its own
    coordinates). ``ve`` against the VP process (LogSNRSDE, same t_min and T) with ve's SNR(t) at every t,
    on the same (x₀, ε) paths (:func:`common_path_losses`), to
    1e-8·max(1, |L_∞|). ``ve``'s γ must be linear in t, as for ``VESDE(kernel="score_sde")``
    (γ = 2 log σ_min + 2t log(σ_max/σ_min)), so that the quadrature in t resolves both (the exact VE
    kernel's γ ≈ log t near t_min is not resolved by Gauss–Legendre nodes in t)."""
    vp = vp_with_snr_of(ve)
    _, L = common_path_losses(q, {"vp": vp, "ve": ve}, seed=seed, n_samples=n_samples)
    return schedule_invariance(L["vp"], L["ve"], name="vdm_Linf_vp_ve_rescaling",
                               equation="Sec. 4.4: L_inf(VP) = L_inf(VE) for the same SNR(t)",
                               settings=dict(ve=repr(ve), vp_gamma=repr(vp.gamma), D=q.dim, K=q.n_components,
                                             n_samples=n_samples))


def schedule_invariance(l_a, l_b, *, settings=None, name: str = "vdm_Linf_schedule_invariance",
                        equation: str = "Eq. 18: L_inf(gamma_a) = L_inf(gamma_b) for equal endpoints") -> CheckResult:
    """The record of VDM Eq. 18 (THEORY.md §4.4) from per-path L_∞ of two schedules on the same paths
    (:func:`common_path_losses`): the identity of their means to 1e-8·max(1, |L_∞|), paired SE; the largest
    per-path difference and the Monte-Carlo SE of L_∞ itself are recorded (:func:`check_vdm_schedule_invariance`;
    figure 4 records it on the losses it has already computed)."""
    l_a, l_b = np.asarray(l_a), np.asarray(l_b)
    a, b, se = engine.paired(l_a, l_b)
    s = dict(settings or {})
    s.update(max_abs_path_difference=float(np.max(np.abs(l_a - l_b))), L_inf_mc_se=engine.mc_mean(l_a)[1],
             quadrature=f"{INVARIANCE_QUADRATURE[0]} panels x {INVARIANCE_QUADRATURE[1]} Gauss-Legendre nodes in t, "
                        "common (x0, eps) per path")
    s["paired_se"] = se  # recorded; the identity is exact per path, so only the quadrature's atol is allowed
    return engine.identity(name, PAPER, equation, a, b, 0.0, atol=1e-8 * max(1.0, abs(a)), settings=s)


def check_vdm_song(q: GaussianMixture, sde: LogSNRSDE, model, *, seed: int = 0, n_samples: int = 256) -> CheckResult:
    """THEORY.md §4.7 (VDM Eq. 17 in its two forms): lhs = the SNR form −½∫_{t_min}^T SNR'(t) E‖x − x̂_θ‖² dt
    (:func:`_snr_form_integrand`, the independent target) equals rhs = the library's L_∞
    (:func:`numerics.vdm.continuous_diffusion_loss`, i.e. ½∫γ' E‖ε − ε̂_θ‖² dt = Song's likelihood-weighted
    DSM term ½∫g² E‖s_θ + ε/σ‖² dt via numerics.losses.dsm_loss_terms, weighting "g2"), on the same
    Gauss–Legendre nodes, x₀ and noise: an algebraic identity per sample (atol 1e-9·scale)."""
    key = engine.key_from_seed(seed)
    k0, k1 = jax.random.split(key)
    x0 = q.sample(k0, n_samples)
    l_lib, (t, w, eps) = _l_inf_paths(sde, model, x0, k1)
    alpha, sigma, _, _ = engine.grid_coeffs(sde, t)
    minus_dsnr = -np.asarray(sde.log_snr_derivative(jnp.asarray(t))) * np.exp(np.asarray(sde.log_snr(jnp.asarray(t))))
    vals = engine.eval_on_paths(_snr_form_integrand, (model,), x0, eps, t, alpha, sigma)
    l_snr = 0.5 * vals @ jnp.asarray(w * minus_dsnr)
    a, b, se = engine.paired(l_snr, l_lib)
    scale = max(1.0, abs(a))
    return engine.identity("vdm_Linf_eq_song_dsm", PAPER + " / Song+21",
                           "L_inf: -1/2 int SNR' E||x - x_hat||^2 dt = 1/2 int g^2 E||s + eps/sigma||^2 dt",
                           a, b, se, atol=1e-9 * scale,
                           settings=dict(D=q.dim, n_samples=n_samples, nodes=t.size,
                                         lhs="SNR form (test target, this module)",
                                         rhs="numerics.vdm.continuous_diffusion_loss (= dsm_loss_terms 'g2')"))


def gaussian_l_inf(x, mu, s2, snr_min: float, snr_max: float):
    """Closed-form L_∞(x) for data N(μ, diag s2) and the exact denoiser (THEORY.md §4.5), summed over dims."""
    x, mu, s2 = (np.asarray(z, dtype=np.float64) for z in (x, mu, s2))
    a = 1.0 / (1.0 + snr_min * s2) - 1.0 / (1.0 + snr_max * s2)
    return float(np.sum(0.5 * ((x - mu) ** 2 / s2 * a + np.log((1 + snr_max * s2) / (1 + snr_min * s2)) - a)))
