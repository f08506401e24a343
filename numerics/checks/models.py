"""Score models for the checks: "a model is any score function" (x, t) ↦ s_θ(x, t) for ONE point.

* the exact score of a mixture: :meth:`numerics.mixture.GaussianMixture.score_fn` (a PyTree);
* :class:`PerturbedScore`: a base score plus ``amplitude`` × a structured perturbation
  v(x, t) = φ(t)·c_t·(A y + b + sin(W y)), y = c_t x, c_t = (α_t² + σ_t²)^{-1/2} (so that v has the
  scale of a score at every t, for every SDE), with a general (non-symmetric) A — not a gradient
  field for D ≥ 2 — or, with ``kind="rotation"``, A antisymmetric and b = W = 0 (divergence-free,
  not a gradient field), or ``kind="gradient"``, A symmetric and W = 0 (a gradient field);
* trained networks: any callable with the same signature.

φ(t) = 1 by default; ``time_profile="bump"`` uses φ(t) = 4 (t/T)(1 − t/T).
"""

from __future__ import annotations

from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["PerturbedScore", "random_perturbation"]


class PerturbedScore(eqx.Module):
    """s(x, t) = base(x, t) + amplitude · φ(t) · c_t (A y + b + sin(W y)),  y = c_t x."""

    base: eqx.Module
    sde: eqx.Module
    A: jnp.ndarray
    b: jnp.ndarray
    W: jnp.ndarray
    amplitude: jnp.ndarray
    T: float = eqx.field(static=True, default=1.0)
    bump: bool = eqx.field(static=True, default=False)

    def perturbation(self, x, t):
        phi = 4.0 * (t / self.T) * (1.0 - t / self.T) if self.bump else 1.0
        c = jax.lax.rsqrt(self.sde.mean_coeff(t) ** 2 + self.sde.variance(t))
        y = c * x
        return phi * c * (self.A @ y + self.b + jnp.sin(self.W @ y))

    def __call__(self, x, t):
        return self.base(x, t) + self.amplitude * self.perturbation(x, t)


def random_perturbation(
    base,
    sde,
    dim: int,
    seed: int,
    amplitude: float = 0.3,
    *,
    kind: Literal["general", "rotation", "gradient"] = "general",
    bump: bool = False,
) -> PerturbedScore:
    """A :class:`PerturbedScore` with random (seeded) A, b, W of unit scale.

    ``general``: A ~ N(0, 1/D) entries, b ~ N(0, 1), W ~ N(0, 1/D) — smooth, linear growth, not a
    gradient field. ``rotation``: A antisymmetric, b = W = 0 (D = 1 falls back to a constant shift).
    ``gradient``: A symmetric, W = 0 (the exact score of some other density, up to the base).
    """
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    b = rng.normal(size=dim)
    W = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    if kind == "rotation":
        A = A - A.T
        W = np.zeros_like(W)
        b = np.zeros(dim) if dim > 1 else b
    elif kind == "gradient":
        A = 0.5 * (A + A.T)
        W = np.zeros_like(W)
    elif kind != "general":
        raise ValueError(f"kind must be 'general', 'rotation' or 'gradient'; got {kind!r}.")
    return PerturbedScore(
        base,
        sde,
        jnp.asarray(A),
        jnp.asarray(b),
        jnp.asarray(W),
        jnp.asarray(float(amplitude)),
        T=float(sde.T),
        bump=bool(bump),
    )
