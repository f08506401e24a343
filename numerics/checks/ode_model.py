"""The probability-flow ODE *model* on mixtures: its log-likelihood and its own score.

Both come from :func:`numerics.likelihood.ode_log_likelihood` (exact trace, Tsit5, adaptive):

* ``ode_log_prob``: log p^ODE_t(x), the model ODE started at X_t = x with prior π at T;
* ``ode_model_score``: ∇_x log p^ODE_t(x) by ``jax.grad`` of the same solve started at ``t_start = t``
  (reverse mode through the adaptive solve; THEORY.md §3.4 — the score of the ODE model's marginal,
  not the score model s_θ).

Compilation is the dominant cost (a gradient through an adaptive solve compiles for tens of
seconds; afterwards a batch of 64 two-dimensional solves takes milliseconds), so everything here is
arranged to hit one compiled function:

* inputs are evaluated in fixed-size chunks (``CHUNK`` rows, the last chunk padded), so the batch
  shape never changes;
* tolerances and ``t_start`` are traced by ``ode_log_likelihood`` (no recompilation per t);
* models are :class:`~numerics.checks.models.PerturbedScore` PyTrees — the exact score is the
  same structure with amplitude 0 (:func:`exact_as_perturbed`), and the sine perturbation of Lu's
  high-order demonstration is A = b = 0, W = ω I (:func:`sine_perturbation`);
* priors are :class:`~numerics.mixture.GaussianMixture` PyTrees with the data's number of
  components: the exact q_T (:func:`exact_prior`), or the SDE's prior N(0, s² I) written as K equal
  components (:func:`sde_prior_as_mixture`; log Σ_k π_k N = log N exactly).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from numerics.checks.models import PerturbedScore, random_perturbation
from numerics.likelihood import ode_log_likelihood
from numerics.mixture import GaussianMixture
from numerics.sde import SDE

__all__ = [
    "CHUNK",
    "exact_prior",
    "sde_prior_as_mixture",
    "exact_as_perturbed",
    "sine_perturbation",
    "ode_log_prob",
    "ode_model_score",
]

CHUNK = 64


def exact_prior(q: GaussianMixture, sde: SDE) -> GaussianMixture:
    """π = q_T, the exact diffused data law at T."""
    return q.diffuse(sde, sde.T)


def sde_prior_as_mixture(q: GaussianMixture, sde: SDE) -> GaussianMixture:
    """The SDE's prior N(0, prior_std² I) as a mixture with q's weights and K identical components
    (same PyTree shapes as :func:`exact_prior`: the ODE solves compile once for both)."""
    K, D = q.n_components, q.dim
    s2 = float(sde.prior_std) ** 2
    return GaussianMixture(np.asarray(q.weights), np.zeros((K, D)), np.broadcast_to(s2 * np.eye(D), (K, D, D)))


def exact_as_perturbed(q: GaussianMixture, sde: SDE) -> PerturbedScore:
    """The exact score ∇log q_t as a :class:`PerturbedScore` of amplitude 0 (same structure as the
    perturbed models, hence the same compiled solves)."""
    return random_perturbation(q.score_fn(sde), sde, q.dim, 0, 0.0)


def sine_perturbation(q: GaussianMixture, sde: SDE, a: float, omega: float) -> PerturbedScore:
    """s = ∇log q_t + (a/ω) c_t sin(ω c_t x) (elementwise), c_t = (α_t² + σ_t²)^{-1/2} (= 1 for VP).

    Errors of orders 1–3 (THEORY.md §3.3): e_1 = (a/ω) c sin(ω c x) = O(a/ω),
    E_2 = a c² diag cos(ω c x) = O(a), e_3 = ∇ tr E_2 = −a ω c³ sin(ω c x) = O(aω).
    """
    D = q.dim
    base = q.score_fn(sde)
    return PerturbedScore(base, sde, jnp.zeros((D, D)), jnp.zeros(D), float(omega) * jnp.eye(D),
                          jnp.asarray(float(a) / float(omega)), T=float(sde.T), bump=False)


def _chunks(x: np.ndarray, chunk: int):
    n = x.shape[0]
    for i in range(0, n, chunk):
        part = x[i:i + chunk]
        m = part.shape[0]
        if m < chunk:
            part = np.concatenate([part, np.repeat(part[-1:], chunk - m, axis=0)])
        yield part, m


def ode_log_prob(model, sde: SDE, x, *, prior: GaussianMixture, t_start: float | None = None,
                 tol: float = 1e-6, chunk: int = CHUNK) -> np.ndarray:
    """log p^ODE_{t_start}(x) per row of ``x`` (N, D): exact trace, prior ``prior`` at T."""
    x = np.asarray(x, dtype=np.float64)
    out = []
    for part, m in _chunks(x, chunk):
        r = ode_log_likelihood(model, sde, jnp.asarray(part), rtol=tol, atol=tol, prior_log_prob=prior.log_prob,
                               t_start=t_start)
        out.append(np.asarray(r.log_prob)[:m])
    return np.concatenate(out)


def _sum_log_prob(x, model, sde, prior, t_start, tol):
    r = ode_log_likelihood(model, sde, x, rtol=tol, atol=tol, prior_log_prob=prior.log_prob, t_start=t_start)
    return jnp.sum(r.log_prob)


_grad_log_prob = jax.grad(_sum_log_prob)


def ode_model_score(model, sde: SDE, x, t: float, *, prior: GaussianMixture, tol: float = 1e-6,
                    chunk: int = CHUNK) -> np.ndarray:
    """∇_x log p^ODE_t(x) per row of ``x`` (N, D), by ``jax.grad`` of :func:`ode_log_likelihood`
    started at ``t_start = t`` (the rows are independent solves, so the gradient of the sum is the
    per-row gradient)."""
    x = np.asarray(x, dtype=np.float64)
    out = []
    for part, m in _chunks(x, chunk):
        g = _grad_log_prob(jnp.asarray(part), model, sde, prior, float(t), tol)
        out.append(np.asarray(g)[:m])
    return np.concatenate(out)
