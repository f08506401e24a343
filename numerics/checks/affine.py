"""Closed-form Gaussian data and affine score models (THEORY.md §6.1–6.2).

Data q_0 = N(μ, diag(s²)) — any Gaussian, written in the eigenbasis of its covariance: with
isotropic noise and an isotropic prior every quantity here is rotation invariant. Model
s_θ(x, t) = −(x − m̂_t)/v̂_t per coordinate. Then q_t = N(m_t, v_t), m_t = α_t μ,
v_t = α_t² s² + σ_t², and the model laws are Gaussian N(μ_t, w_t) solving, backward from
μ_T = 0, w_T = σ_π² (THEORY.md §2.3, §3.1):

    SDE model (Song+21 Eq. 6):  dμ/dt = f μ + g² (μ − m̂)/v̂,     dw/dt = 2 (f + g²/v̂) w − g²
    ODE model (Song+21 Eq. 13): dμ/dt = f μ + ½ g² (μ − m̂)/v̂,   dw/dt = 2 (f + ½ g²/v̂) w

solved with diffrax (Tsit5, rtol 1e-11) at the quadrature nodes, as deviations from q_t's
(m_t, v_t) (see ``_vector_field``). For the ODE model the same solve
carries the Grönwall comparison function y(t) of THEORY.md §3.3,

    −dy/dt = ½ g² ρ(t) + a(t) y,   y(T) = √D_F(q_T‖π),   a = ½ (g² K + 2 f),  K = max_d 1/v_{t,d},

with ρ(t) = ‖E_2 ∇log p_t + (∇²log p_t) e_1‖_{L²(q_t)} (e_3 = 0 for affine models), so that
√D_F(q_t ‖ p_t^ODE) ≤ y(t) — the bound of the ODE model by first- and second-order errors.
"""

from __future__ import annotations

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from numerics.checks import engine
from numerics.losses import check_choice
from numerics.sde import SDE

__all__ = ["PRIORS", "AffineModel", "AffineSummary", "affine_summary", "gauss_kl", "quad_moment"]

PRIORS: tuple[str, ...] = ("sde", "exact")


class AffineModel(eqx.Module):
    """m̂_t = α_t (μ + dm φ(t)) [+ nothing], v̂_t = (α_t² s2 + σ_t²)(1 + dv φ(t)) with φ(t) = 4(t/T)(1 − t/T).

    ``dm = dv = 0`` is the exact score of N(μ, diag(s2)): use ``s2`` = the data variance for the
    exact score, or another variance for the exact score of another Gaussian.
    """

    mu: jnp.ndarray
    s2: jnp.ndarray
    dm: jnp.ndarray
    dv: jnp.ndarray

    def params(self, sde: SDE, t):
        t = jnp.asarray(t)
        phi = 4.0 * (t / sde.T) * (1.0 - t / sde.T)
        a = sde.mean_coeff(t)
        v = a**2 * self.s2 + sde.variance(t)
        return a * (self.mu + self.dm * phi), v * (1.0 + self.dv * phi)

    def score(self, sde: SDE, x, t):
        m, v = self.params(sde, t)
        return -(x - m) / v


def gauss_kl(m1, v1, m2, v2):
    """KL(N(m1, diag v1) ‖ N(m2, diag v2)), summed over the last axis."""
    return 0.5 * jnp.sum(v1 / v2 + (m1 - m2) ** 2 / v2 - 1.0 - jnp.log(v1 / v2), axis=-1)


def _gauss_kl_dev(v1, dm, dv):
    """:func:`gauss_kl` of N(m, v1) against N(m + dm, v1 + dv), from the deviations (no cancellation
    when they are small): ½ Σ [−r − log(1 − r) + dm²/(v1 + dv)], r = dv/(v1 + dv)."""
    v2 = v1 + dv
    r = dv / v2
    return 0.5 * jnp.sum(-r - jnp.log1p(-r) + dm**2 / v2, axis=-1)


def quad_moment(A1, B1, A2, B2, m, v):
    """E[(A1 x + B1)(A2 x + B2)] for x ~ N(m, v), elementwise (THEORY.md §6.2)."""
    return A1 * A2 * (v + m**2) + (A1 * B2 + A2 * B1) * m + B1 * B2


def _vector_field(t, state, args):
    """d/dt of (μ_t − m_t, w_t − v_t, y_t): the model law's deviation from the data law q_t = N(m_t, v_t).

    The deviations are integrated, not μ and w: with a good model and prior they are ~1e-5 of μ and w,
    and a solve of μ and w to relative error ε leaves them (and every score error built from them) with
    relative error ε·w/|w − v|. From dm/dt = f m and dv/dt = 2 f v + g² (THEORY.md §1.1),
        d(μ − m)/dt = f (μ − m) + c g² ((μ − m) + (m − m̂))/v̂,
        d(w − v)/dt = 2 f (w − v) + 2c g² ((w − v) + (v − v̂))/v̂,
    with m − m̂ and v − v̂ the model's errors in closed form (exactly 0 for the exact score).
    """
    model, mu_d, s2_d, sde, kind = args
    dmu_dev, dw_dev, y = state
    f = sde.drift_coeff(t)
    g2 = sde.diffusion_sq(t)
    mh, vh = model.params(sde, t)
    a_t = sde.mean_coeff(t)
    m = a_t * mu_d
    v = a_t**2 * s2_d + sde.variance(t)
    c = 0.5 * (1.0 + kind)  # kind = 1: SDE model (c = 1), kind = 0: ODE model (c = ½)
    ddmu = f * dmu_dev + c * g2 * (dmu_dev + (m - mh)) / vh
    ddw = 2.0 * f * dw_dev + 2.0 * c * g2 * (dw_dev + (v - vh)) / vh
    # Grönwall comparison function (ODE model only; harmless otherwise)
    mu, w = m + dmu_dev, v + dw_dev
    A1, B1 = 1.0 / v - 1.0 / vh, mh / vh - m / v  # e_1 = s_θ − ∇log q
    E2 = 1.0 / v - 1.0 / vh  # ∇s_θ − ∇²log q (diagonal)
    RA = (-E2 - A1) / w  # r = E_2 ∇log p + (∇²log p) e_1, ∇log p = −(x − μ)/w
    RB = (E2 * mu - B1) / w
    rho = jnp.sqrt(jnp.sum(quad_moment(RA, RB, RA, RB, m, v)))
    K = jnp.max(1.0 / v)
    a = 0.5 * (g2 * K + 2.0 * f)
    dy = -(0.5 * g2 * rho + a * y)
    return ddmu, ddw, dy


@dataclasses.dataclass(frozen=True)
class AffineSummary:
    """Every closed-form quantity of Theorem 1 and of Lu et al. (3.1)–(3.3) on [t0, T]."""

    kl_T: float  # KL(q_T ‖ π)
    kl_sde: float  # KL(q_t0 ‖ p_t0^SDE)
    kl_ode: float  # KL(q_t0 ‖ p_t0^ODE)
    J_SM: float  # ½∫ g² E_q ‖s_θ − ∇log q‖²
    J_ODE: float  # ½∫ g² E_q (s_θ − ∇log q)·(∇log p^ODE − ∇log q)
    J_Fisher: float  # ½∫ g² D_F(q_t ‖ p_t^ODE)
    J_Fisher_bound: float  # ½∫ g² y(t)²  (Grönwall bound from first/second-order errors)
    fisher_ratio_max: float  # max_t D_F(q_t‖p_t^ODE) / y(t)²  (≤ 1 if the Grönwall bound holds)
    nll_sde: float  # E_q[−log p^SDE_t0] (cross-entropy; = H(q_t0) + kl_sde)
    nll_ode: float
    entropy: float  # H(q_t0)
    quad_nodes: int
    sde_law: tuple  # (μ_t0, w_t0) of p^SDE_t0, arrays (D,)
    ode_law: tuple  # (μ_t0, w_t0) of p^ODE_t0
    data_law: tuple  # (m_t0, v_t0) of q_t0

    @property
    def J_Diff(self) -> float:
        return self.J_ODE - self.J_SM


def affine_summary(
    mu, s2, model: AffineModel, sde: SDE, *, t0: float | None = None, prior: str = "sde",
    n_panels: int = 16, order: int = 16,
) -> AffineSummary:
    """All closed-form quantities for data N(μ, diag s2), the affine ``model`` and ``sde`` on [t0, T].

    ``prior="sde"`` uses the SDE's prior N(0, prior_std² I); ``prior="exact"`` uses π = q_T, which
    must then be isotropic in the model's eyes: it is applied per coordinate as N(m_T, v_T)
    (the solves start from μ_T = m_T, w_T = v_T). Another ``prior`` raises a ValueError.
    """
    check_choice("prior", prior, PRIORS)
    mu = jnp.asarray(mu, dtype=jnp.float64).reshape(-1)
    s2 = jnp.asarray(s2, dtype=jnp.float64).reshape(-1)
    t0 = float(sde.t_min if t0 is None else t0)
    grid = engine.time_grid(sde, t0, sde.T, n_panels=n_panels, order=order)
    order_idx = np.argsort(-grid.t)  # descending for the backward solve
    ts = np.concatenate([grid.t[order_idx], [t0]])
    ts = np.maximum.accumulate(ts[::-1])[::-1]  # monotone non-increasing (ties allowed)
    aT, vT = sde.mean_coeff(jnp.asarray(sde.T)), sde.variance(jnp.asarray(sde.T))
    mT, vTd = aT * mu, aT**2 * s2 + vT
    if prior == "exact":
        pi_m, pi_v = mT, vTd
    else:
        pi_m, pi_v = jnp.zeros_like(mu), jnp.full_like(mu, float(sde.prior_std) ** 2)
    kl_T = float(gauss_kl(mT, vTd, pi_m, pi_v))
    u_T2 = float(jnp.sum(quad_moment(1.0 / vTd - 1.0 / pi_v, pi_m / pi_v - mT / vTd,
                                     1.0 / vTd - 1.0 / pi_v, pi_m / pi_v - mT / vTd, mT, vTd)))
    out = {}  # deviations (μ_t − m_t, w_t − v_t) of the model laws from q_t, and y_t (see _vector_field)
    for kind in ("sde", "ode"):
        out[kind] = _solve_init(model, mu, s2, sde, jnp.asarray(1.0 if kind == "sde" else 0.0), pi_m - mT,
                                pi_v - vTd, jnp.asarray(np.sqrt(u_T2)), jnp.asarray(ts))
    t_nodes = jnp.asarray(ts[:-1])
    a = sde.mean_coeff(t_nodes)[:, None]
    m = a * mu
    v = a**2 * s2 + sde.variance(t_nodes)[:, None]
    mh, vh = jax.vmap(lambda t: model.params(sde, t))(t_nodes)
    A1, B1 = 1.0 / v - 1.0 / vh, mh / vh - m / v
    dmu_o, dw_o, y_o = (z[:-1] for z in out["ode"])
    w_o = v + dw_o  # ∇log p^ODE_t − ∇log q_t = A2 x + B2, written without cancellation
    A2, B2 = dw_o / (v * w_o), (dmu_o * v - m * dw_o) / (v * w_o)
    e1sq = jnp.sum(quad_moment(A1, B1, A1, B1, m, v), -1)
    e1u = jnp.sum(quad_moment(A1, B1, A2, B2, m, v), -1)
    usq = jnp.sum(quad_moment(A2, B2, A2, B2, m, v), -1)
    wg2 = jnp.asarray(grid.w_g2[order_idx])
    J_SM = 0.5 * float(wg2 @ e1sq)
    J_ODE = 0.5 * float(wg2 @ e1u)
    J_F = 0.5 * float(wg2 @ usq)
    J_Fb = 0.5 * float(wg2 @ y_o**2)
    ratio = float(jnp.max(usq / jnp.maximum(y_o**2, 1e-300)))
    a0 = sde.mean_coeff(jnp.asarray(t0))
    m0, v0 = a0 * mu, a0**2 * s2 + sde.variance(jnp.asarray(t0))
    dev_s = out["sde"][0][-1], out["sde"][1][-1]
    dev_o = out["ode"][0][-1], out["ode"][1][-1]
    mu_s, w_s = m0 + dev_s[0], v0 + dev_s[1]
    mu_o0, w_o0 = m0 + dev_o[0], v0 + dev_o[1]
    kl_sde = float(_gauss_kl_dev(v0, *dev_s))
    kl_ode = float(_gauss_kl_dev(v0, *dev_o))
    H = float(0.5 * jnp.sum(jnp.log(2 * jnp.pi * jnp.e * v0)))
    return AffineSummary(
        kl_T, kl_sde, kl_ode, J_SM, J_ODE, J_F, J_Fb, ratio, H + kl_sde, H + kl_ode, H, grid.n,
        (np.asarray(mu_s), np.asarray(w_s)), (np.asarray(mu_o0), np.asarray(w_o0)), (np.asarray(m0), np.asarray(v0)),
    )


@eqx.filter_jit
def _solve_init(model, mu_d, s2_d, sde, kind, mu_T, w_T, y_T, ts):
    term = diffrax.ODETerm(_vector_field)
    sol = diffrax.diffeqsolve(
        term,
        diffrax.Tsit5(),
        t0=sde.T,
        t1=ts[-1],
        dt0=-1e-3,
        y0=(mu_T, w_T, y_T),
        args=(model, mu_d, s2_d, sde, kind),
        saveat=diffrax.SaveAt(ts=ts),
        stepsize_controller=diffrax.PIDController(rtol=1e-11, atol=1e-16),
        max_steps=200_000,
    )
    return sol.ys
