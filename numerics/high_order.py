"""High-order denoising score matching of Lu et al. 2022 (ICML), for ONE score network s_θ.

Lu, Zheng, Bao, Chen, Li & Zhu, *Maximum Likelihood Training for Score-Based Diffusion ODEs by
High-Order Denoising Score Matching* (arXiv 2206.08265), §4; THEORY.md §3.5–3.7.

Every order is a derivative of the same network (THEORY.md §3.7):

    s_1 = s_θ(x, t),   s_2 = ∇_x s_θ (Jacobian, J_ij = ∂s_i/∂x_j),   s_3 = ∇_x tr(∇_x s_θ),

and lower orders enter the targets only through ``stop_gradient``: with x_t = α_t x_0 + σ_t ε,

    ŝ_1 = sg(s_θ),  ŝ_2 = sg(∇_x s_θ),  c = σ_t ŝ_1 + ε                       (THEORY.md §3.5)

    J^(2,F)  = ‖σ² s_2 + I − c cᵀ‖_F²                 minimiser (E[ccᵀ|x_t] − I)/σ² = ∇²log q_t + δδᵀ
    J^(2,tr) = |σ² tr s_2 + D − ‖c‖²|²                 minimiser tr: Δ log q_t + ‖δ‖²
    J^(3)    = ‖σ³ s_3 − Y‖²,
    Y = −‖c‖² c + (σ² tr ŝ_2 + D + 2) c + 2σ² ŝ_2 c    minimiser ∇Δlog q_t − ‖δ‖²δ + tr(Δ_2)δ + 2Δ_2 δ

(δ = ŝ_1 − ∇log q_t, Δ_2 = ŝ_2 − ∇²log q_t; THEORY.md §3.5, Eq. 3.3).

**Exact and sliced forms.** ``estimator="exact"`` forms the full Jacobian (D Jacobian-vector
products) and s_3 by reverse mode through it: only for small D. ``estimator="hutchinson"`` uses
the official code's sliced residuals with Rademacher probes v (THEORY.md §3.5, §3.6):

    r_F(v)  = σ² (∇s_θ) v + v − (c·v) c                         E_v‖r_F‖² = J^(2,F)   (unbiased)
    r_tr(v) = σ² vᵀ(∇s_θ)v + ‖v‖² − (c·v)²                      E_v r_tr = σ² tr s_2 + D − ‖c‖²
    r_3(v)  = σ³ ∇_x(vᵀ(∇s_θ)v) + (c·v)² c − (σ² vᵀŝ_2 v + ‖v‖²) c − 2(v·c)(σ² ŝ_2 v + v)
                                                                E_v r_3 = σ³ s_3 − Y

The *residuals* are unbiased; the squared sliced trace and third-order losses are not unbiased
for J^(2,tr) and J^(3): they add the probe variance, e.g. with A = σ² s_2 + I − ccᵀ,
E_v r_tr² = (tr A)² + 2(‖A_sym‖_F² − Σ_i A_ii²) (:func:`sliced_trace_expectation`). Their
minimiser over the network's sliced quantities is still the conditional expectation of the target
(per probe, THEORY.md §3.6), which is what training needs.

**Normalisation.** The official JAX code (mle_score_ode ``losses.py``, ``reduce_mean=True``,
which it asserts) divides each residual by D before squaring and then averages over dimensions:
its per-example values are ‖r_F‖²/D², r_tr²/D² and ‖r_3‖²/D³. ``normalisation="code"`` applies
exactly these factors (to the exact forms as well); ``normalisation="none"`` returns the
objectives as written above (used by the tests of minimisers and unbiasedness).

Everything computes in the dtype of ``x0`` (float64 in numerics, float32/bf16 in training).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from numerics.losses import PARAMETERISATIONS, check_choice, dsm_loss_terms, perturb, sample_time
from numerics.mixture import GaussianMixture
from numerics.sde import SDE, check_time

__all__ = [
    "HighOrderLoss",
    "ESTIMATORS",
    "NORMALISATIONS",
    "score_and_jacobian",
    "score_jacobian_and_grad_trace",
    "sliced_score_derivatives",
    "conditional_noise_residual",
    "second_order_frobenius_residual",
    "second_order_trace_residual",
    "third_order_target",
    "third_order_residual",
    "sliced_second_order_frobenius_residual",
    "sliced_second_order_trace_residual",
    "sliced_third_order_residual",
    "sliced_trace_expectation",
    "high_order_terms",
    "high_order_dsm_loss",
    "conditional_c_moments",
    "s2_star",
    "s3_star",
]

ESTIMATORS: tuple[str, ...] = ("exact", "hutchinson")
NORMALISATIONS: tuple[str, ...] = ("code", "none")
_PROBE_SALT = 0x48494F52  # fold_in constant for the probe key: never one of jax.random.split's counters


# --- derivatives of one score network (one example; the event is flattened to D) -------------------


def _flat(model: Callable, x: Array, t) -> tuple[Callable, Array]:
    shape = x.shape
    return (lambda z: model(z.reshape(shape), t).reshape(-1)), x.reshape(-1)


def score_and_jacobian(model: Callable, x: Float[Array, "*event"], t) -> tuple[Float[Array, " D"], Float[Array, "D D"]]:
    """(s_θ(x, t), ∇_x s_θ) with J_ij = ∂s_i/∂x_j, flattened; D Jacobian-vector products (forward mode)."""
    f, z = _flat(model, x, t)
    s, lin = jax.linearize(f, z)
    cols = jax.vmap(lin)(jnp.eye(z.size, dtype=z.dtype))  # row j = J e_j
    return s, cols.T


def score_jacobian_and_grad_trace(
    model: Callable, x: Float[Array, "*event"], t
) -> tuple[Float[Array, " D"], Float[Array, "D D"], Float[Array, " D"]]:
    """(s_θ, ∇_x s_θ, ∇_x tr ∇_x s_θ): Lu et al.'s three orders, exactly (reverse over forward mode)."""

    def trace(z):
        s, jac = score_and_jacobian(model, z.reshape(x.shape), t)
        return jnp.trace(jac), (s, jac)

    s3, (s, jac) = jax.grad(trace, has_aux=True)(x.reshape(-1))
    return s, jac, s3


def sliced_score_derivatives(
    model: Callable, x: Float[Array, "*event"], t, v: Float[Array, "*event"]
) -> tuple[Float[Array, " D"], Float[Array, " D"], Float[Array, " D"]]:
    """(s_θ, (∇s_θ) v, ∇_x(vᵀ(∇s_θ)v)) for one probe v: one jvp, and one vjp through it
    (the official code's ``grad_div_fn``)."""
    f, z = _flat(model, x, t)
    vf = v.reshape(-1)

    def quad(z_):
        s, jv = jax.jvp(f, (z_,), (vf,))
        return jnp.dot(vf, jv), (s, jv)

    s3v, (s, jv) = jax.grad(quad, has_aux=True)(z)
    return s, jv, s3v


# --- per-example residuals (formulas written once) --------------------------------------------------


def conditional_noise_residual(score_hat: Float[Array, " D"], eps: Float[Array, " D"], sigma) -> Float[Array, " D"]:
    """c = σ_t ŝ_1 + ε = σ_t (ŝ_1 − ∇log q_{0t}(x_t|x_0)) (THEORY.md §3.5); pass ŝ_1 already stopped."""
    return sigma * score_hat + eps


def second_order_frobenius_residual(jac: Float[Array, "D D"], c: Float[Array, " D"], sigma) -> Float[Array, "D D"]:
    """σ² s_2 + I − c cᵀ; J^(2,F) is its squared Frobenius norm (Lu et al. 2022, Eq. 12 form; THEORY.md §3.5)."""
    return sigma**2 * jac + jnp.eye(c.size, dtype=c.dtype) - jnp.outer(c, c)


def second_order_trace_residual(trace_jac, c: Float[Array, " D"], sigma) -> Float[Array, ""]:
    """σ² tr s_2 + D − ‖c‖²; J^(2,tr) is its square (THEORY.md §3.5)."""
    return sigma**2 * trace_jac + c.size - jnp.sum(c**2)


def third_order_target(c: Float[Array, " D"], jac_hat: Float[Array, "D D"], sigma) -> Float[Array, " D"]:
    """Y = −‖c‖² c + (σ² tr ŝ_2 + D + 2) c + 2σ² ŝ_2 c (Lu et al. 2022 §4.2; THEORY.md §3.6)."""
    return -jnp.sum(c**2) * c + _third_order_linear_part(c, jac_hat, sigma)


def _third_order_linear_part(c: Float[Array, " D"], jac_hat: Float[Array, "D D"], sigma) -> Float[Array, " D"]:
    """(σ² tr ŝ_2 + D + 2) c + 2σ² ŝ_2 c: the part of Y linear in c (so E[Y] takes it at E[c])."""
    return (sigma**2 * jnp.trace(jac_hat) + c.shape[-1] + 2) * c + 2 * sigma**2 * (jac_hat @ c)


def third_order_residual(
    grad_trace: Float[Array, " D"], c: Float[Array, " D"], jac_hat: Float[Array, "D D"], sigma
) -> Float[Array, " D"]:
    """σ³ s_3 − Y; J^(3) is its squared norm (THEORY.md §3.6)."""
    return sigma**3 * grad_trace - third_order_target(c, jac_hat, sigma)


def sliced_second_order_frobenius_residual(
    jv: Float[Array, " D"], v: Float[Array, " D"], c: Float[Array, " D"], sigma
) -> Float[Array, " D"]:
    """σ²(∇s_θ)v + v − (c·v)c; E_v‖·‖² = J^(2,F) for any probe with E[vvᵀ] = I (THEORY.md §3.5)."""
    return sigma**2 * jv + v - jnp.dot(c, v) * c


def sliced_second_order_trace_residual(
    jv: Float[Array, " D"], v: Float[Array, " D"], c: Float[Array, " D"], sigma
) -> Float[Array, ""]:
    """σ² vᵀ(∇s_θ)v + ‖v‖² − (c·v)²; its mean over v is the exact trace residual (THEORY.md §3.5)."""
    return sigma**2 * jnp.dot(v, jv) + jnp.sum(v**2) - jnp.dot(c, v) ** 2


def sliced_third_order_residual(
    grad_vjv: Float[Array, " D"], v: Float[Array, " D"], c: Float[Array, " D"], jv_hat: Float[Array, " D"], sigma
) -> Float[Array, " D"]:
    """σ³∇(vᵀ(∇s_θ)v) + (c·v)²c − (σ² vᵀŝ_2 v + ‖v‖²)c − 2(v·c)(σ² ŝ_2 v + v); mean over v = σ³ s_3 − Y
    (THEORY.md §3.6). ``jv_hat`` = sg((∇s_θ) v)."""
    cv = jnp.dot(c, v)
    return (
        sigma**3 * grad_vjv
        + cv**2 * c
        - (sigma**2 * jnp.dot(v, jv_hat) + jnp.sum(v**2)) * c
        - 2 * cv * (sigma**2 * jv_hat + v)
    )


def sliced_trace_expectation(matrix: Float[Array, "D D"]) -> Float[Array, ""]:
    """E_v[(vᵀAv)²] for Rademacher v: (tr A)² + 2(‖A_sym‖_F² − Σ_i A_ii²) — the expectation of the
    squared sliced trace residual with A = σ² s_2 + I − ccᵀ (Hutchinson's variance, THEORY.md §8.16)."""
    sym = 0.5 * (matrix + matrix.T)
    return jnp.trace(matrix) ** 2 + 2 * (jnp.sum(sym**2) - jnp.sum(jnp.diag(matrix) ** 2))


# --- batched terms ---------------------------------------------------------------------------------


def _check_order(order: int) -> int:
    if isinstance(order, bool) or order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3 (Lu et al. 2022 score-matching orders); got {order!r}.")
    return int(order)


def _as_score_model(model: Callable, sde: SDE, parameterisation: str) -> Callable:
    check_choice("parameterisation", parameterisation, PARAMETERISATIONS)
    if parameterisation == "score":
        return model
    return lambda x, t: -model(x, t) / sde.std(t).astype(x.dtype)


class HighOrderLoss(eqx.Module):
    """Per-example terms of :func:`high_order_dsm_loss` (all shape (batch,); unused orders are 0).

    ``total = w1·first + w2·(second_frobenius + second_trace) + w3·third``. ``first`` is numerics.losses'
    weighted DSM value (unbiased for J_DSM); the higher orders are normalised as selected.
    """

    total: Float[Array, " batch"]
    first: Float[Array, " batch"]
    second_frobenius: Float[Array, " batch"]
    second_trace: Float[Array, " batch"]
    third: Float[Array, " batch"]


def high_order_terms(
    model: Callable,
    sde: SDE,
    x0: Float[Array, "batch *event"],
    t: Float[Array, " batch"],
    eps: Float[Array, "batch *event"],
    *,
    order: int,
    estimator: str = "hutchinson",
    probes: Float[Array, "batch P *event"] | None = None,
    normalisation: str = "code",
    parameterisation: str = "score",
) -> tuple[Float[Array, " batch"], Float[Array, " batch"], Float[Array, " batch"]]:
    """(J^(2,F), J^(2,tr), J^(3)) per example at given (t, ε) — zeros above ``order``.

    ``model(x, t)`` takes ONE example. ``probes`` (batch, P, *event) are required for
    ``estimator="hutchinson"`` (the per-example value averages the P probes). ``order`` 1 returns zeros.
    """
    order = _check_order(order)
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("normalisation", normalisation, NORMALISATIONS)
    dtype = x0.dtype
    zeros = jnp.zeros(x0.shape[0], dtype)
    if order == 1:
        return zeros, zeros, zeros
    if estimator == "hutchinson" and probes is None:
        raise ValueError("probes is required for estimator='hutchinson' (shape (batch, n_probes, *event)).")
    score_model = _as_score_model(model, sde, parameterisation)
    t = t.astype(dtype)
    x_t, sigma = perturb(sde, x0, t, eps)
    D = x0[0].size
    if normalisation == "code":
        n2, n3 = 1.0 / D**2, 1.0 / D**3
    else:
        n2, n3 = 1.0, 1.0

    def exact_one(x, ti, si, e):
        e = e.reshape(-1)
        if order == 3:
            s, jac, s3 = score_jacobian_and_grad_trace(score_model, x, ti)
        else:
            s, jac = score_and_jacobian(score_model, x, ti)
        c = conditional_noise_residual(jax.lax.stop_gradient(s), e, si)
        l2f = jnp.sum(second_order_frobenius_residual(jac, c, si) ** 2)
        l2t = second_order_trace_residual(jnp.trace(jac), c, si) ** 2
        if order == 3:
            l3 = jnp.sum(third_order_residual(s3, c, jax.lax.stop_gradient(jac), si) ** 2)
        else:
            l3 = jnp.zeros((), dtype)
        return l2f, l2t, l3

    def sliced_one(x, ti, si, e, vs):
        e = e.reshape(-1)

        def per_probe(v):
            if order == 3:
                s, jv, s3v = sliced_score_derivatives(score_model, x, ti, v)
            else:
                f, z = _flat(score_model, x, ti)
                s, jv = jax.jvp(f, (z,), (v.reshape(-1),))
                s3v = None
            vf = v.reshape(-1)
            c = conditional_noise_residual(jax.lax.stop_gradient(s), e, si)
            l2f = jnp.sum(sliced_second_order_frobenius_residual(jv, vf, c, si) ** 2)
            l2t = sliced_second_order_trace_residual(jv, vf, c, si) ** 2
            if order == 3:
                l3 = jnp.sum(sliced_third_order_residual(s3v, vf, c, jax.lax.stop_gradient(jv), si) ** 2)
            else:
                l3 = jnp.zeros((), dtype)
            return l2f, l2t, l3

        return jax.tree_util.tree_map(lambda a: jnp.mean(a, axis=0), jax.vmap(per_probe)(vs))

    if estimator == "exact":
        l2f, l2t, l3 = jax.vmap(exact_one)(x_t, t, sigma, eps.reshape(x0.shape[0], -1))
    else:
        l2f, l2t, l3 = jax.vmap(sliced_one)(x_t, t, sigma, eps.reshape(x0.shape[0], -1), probes.astype(dtype))
    return (n2 * l2f).astype(dtype), (n2 * l2t).astype(dtype), (n3 * l3).astype(dtype)


def high_order_dsm_loss(
    model: Callable,
    sde: SDE,
    x0: Float[Array, "batch *event"],
    key: PRNGKeyArray,
    *,
    order: int = 2,
    weighting: str = "g2_is",
    weights: tuple[float | int, float | int, float | int] = (1.0, 1.0, 1.0),
    estimator: str = "hutchinson",
    n_probes: int = 1,
    normalisation: str = "code",
    parameterisation: str = "score",
    t_min: float | None = None,
) -> HighOrderLoss:
    """Lu et al. 2022's objective L1 + w2·(L2_F + L2_tr) + w3·L3 per example (THEORY.md §3.7).

    * t and ε are drawn exactly as :func:`numerics.losses.dsm_loss` draws them from ``key`` (so
      ``order=1`` reproduces it bit for bit); the first-order term IS ``dsm_loss_terms`` with the
      given ``weighting`` ("sigma2", "g2", "g2_is"). The higher orders use the same (t, ε, x_t)
      and, as in the official code, no time weight: with ``"g2_is"`` they are implicitly weighted
      by the sampling density of t.
    * ``weights``: (1, 1, 1) as in the official JAX code; (1, 0.5, 0.1) is the PyTorch toy's.
    * ``estimator``: "hutchinson" (``n_probes`` Rademacher probes per example, shared by all
      orders, drawn from ``fold_in(key, ·)``) or "exact" (small D only).
    * ``order`` 3 includes the second-order terms, as in the official code.

    Average ``total`` over the batch for the training loss. Raises ValueError on an invalid order,
    estimator, normalisation or n_probes (the official code's ``assert ValueError`` never raised).
    """
    order = _check_order(order)
    check_choice("estimator", estimator, ESTIMATORS)
    check_choice("normalisation", normalisation, NORMALISATIONS)
    if isinstance(n_probes, bool) or int(n_probes) != n_probes or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer; got {n_probes!r}.")
    if len(weights) != 3:
        raise ValueError(f"weights must be a triple (w1, w2, w3); got {weights!r}.")
    w1, w2, w3 = (float(w) for w in weights)
    k_t, k_eps = jax.random.split(key)  # the same draws as numerics.losses.dsm_loss
    t = sample_time(sde, k_t, (x0.shape[0],), weighting, t_min=t_min, dtype=x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, dtype=x0.dtype)
    first = dsm_loss_terms(model, sde, x0, t, eps, weighting, parameterisation=parameterisation, t_min=t_min)
    probes = None
    if estimator == "hutchinson" and order > 1:
        k_v = jax.random.fold_in(key, _PROBE_SALT)
        probes = jax.random.rademacher(k_v, (x0.shape[0], int(n_probes), *x0.shape[1:]), dtype=x0.dtype)
    l2f, l2t, l3 = high_order_terms(
        model, sde, x0, t, eps, order=order, estimator=estimator, probes=probes,
        normalisation=normalisation, parameterisation=parameterisation,
    )
    total = w1 * first + w2 * (l2f + l2t) + w3 * l3
    return HighOrderLoss(total=total.astype(x0.dtype), first=first, second_frobenius=l2f, second_trace=l2t, third=l3)


# --- exact minimisers from the posterior (tests; THEORY.md §3.5, §3.6, §6.3) ---------------------


def conditional_c_moments(
    mixture: GaussianMixture, sde: SDE, t, x_t: Float[ArrayLike, " D"], score_hat: Float[ArrayLike, " D"]
) -> tuple[Float[Array, " K"], Float[Array, "K D"], Float[Array, "K D D"]]:
    """Law of c = σ ŝ_1 + ε given x_t, for mixture data: a Gaussian mixture with the posterior
    weights w_k(x_t), means σ ŝ_1 + (x_t − α m_k)/σ and covariances α² S_k/σ², where
    x_0 | x_t, k ~ N(m_k, S_k) (THEORY.md §6.3). ``score_hat`` is a fixed vector (ŝ_1 at x_t)."""
    t = check_time(sde, t)
    x_t = jnp.asarray(x_t)
    alpha, sigma = sde.mean_coeff(t), sde.std(t)
    w, m, S = mixture.posterior(sde, t, x_t)
    means = sigma * jnp.asarray(score_hat) + (x_t - alpha * m) / sigma
    return w, means, (alpha / sigma) ** 2 * S


def s2_star(
    mixture: GaussianMixture, sde: SDE, t, x_t: Float[ArrayLike, " D"], score_hat: Float[ArrayLike, " D"]
) -> Float[Array, "D D"]:
    """Minimiser of J^(2,F) at x_t: (E[ccᵀ | x_t] − I)/σ² from exact conditional moments (THEORY.md §3.5)."""
    w, mu, cov = conditional_c_moments(mixture, sde, t, x_t, score_hat)
    second = jnp.einsum("k,kij->ij", w, cov + jnp.einsum("ki,kj->kij", mu, mu))
    return (second - jnp.eye(mu.shape[-1], dtype=mu.dtype)) / sde.variance(t)


def s3_star(
    mixture: GaussianMixture,
    sde: SDE,
    t,
    x_t: Float[ArrayLike, " D"],
    score_hat: Float[ArrayLike, " D"],
    jac_hat: Float[ArrayLike, "D D"],
) -> Float[Array, " D"]:
    """Minimiser of J^(3) at x_t: E[Y | x_t]/σ³, with E[‖c‖²c] = Σ_k w_k[(‖m_k‖² + tr S_k) m_k + 2 S_k m_k]
    for the Gaussian components c | x_t, k ~ N(m_k, S_k) (THEORY.md §3.6, §6.3)."""
    w, mu, cov = conditional_c_moments(mixture, sde, t, x_t, score_hat)
    jac_hat = jnp.asarray(jac_hat)
    sigma = sde.std(t)
    mean_c = w @ mu
    tr_cov = jnp.trace(cov, axis1=-2, axis2=-1)
    cubic = w @ ((jnp.sum(mu**2, -1) + tr_cov)[:, None] * mu + 2 * jnp.einsum("kij,kj->ki", cov, mu))
    mean_y = -cubic + _third_order_linear_part(mean_c, jac_hat, sigma)  # E[Y]: third_order_target in expectation
    return mean_y / sigma**3
