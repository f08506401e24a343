"""Exact Gaussian mixtures and their exact diffused marginals, with scores of orders 1–3.

A mixture q_0 = Σ_k π_k N(μ_k, Σ_k) pushed through any linear SDE stays a mixture with the same
weights: q_t = Σ_k π_k N(α_t μ_k, α_t² Σ_k + σ_t² I) (THEORY.md §6.3). Each covariance is
eigendecomposed once, Σ_k = U_k Λ_k U_kᵀ; then α² Σ_k + σ² I = U_k (α² Λ_k + σ²) U_kᵀ at every t, so
no factorisation ever runs inside a solver loop (STACK_NOTES.md, pitfall 1: batched Cholesky in a
``while_loop`` can deadlock XLA's thread pool, and is 7–10× slower).

All per-point methods take one point of shape (D,) or a batch (..., D); any other last axis raises
``ValueError`` when the call is traced (shapes are static: no run-time cost). Times t are scalars.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from numerics.sde import SDE, check_time

__all__ = ["GaussianMixture", "MixtureScore"]

_LOG_2PI = float(np.log(2 * np.pi))
_UNROLL_DIM = 8  # up to this dimension, eigenbasis products are written out (no dot on XLA:CPU)


def _is_concrete(*xs) -> bool:
    return not any(isinstance(x, jax.core.Tracer) for x in xs)


def _check_points(x, dim: int, name: str = "x") -> Array:
    """``x`` as an array; raise ``ValueError`` unless it has shape (D,) or (..., D) with D = ``dim``.
    Reads only the static shape, so inside ``jit`` it runs once at trace time: no run-time cost."""
    x = jnp.asarray(x)
    shape = tuple(x.shape)
    if len(shape) == 0 or shape[-1] != dim:
        raise ValueError(
            f"{name} must have last axis of size D={dim} (the mixture's dimension); got shape {shape}. "
            f"Pass one point of shape ({dim},) or a batch of shape (..., {dim})."
        )
    return x


def _check_scalar_time(t, name: str = "t") -> None:
    """Raise ``ValueError`` unless ``t`` is a scalar (ndim 0); static, so free inside ``jit``."""
    shape = tuple(jnp.shape(t))
    if len(shape) != 0:
        raise ValueError(
            f"{name} must be a scalar time (ndim 0); got shape {shape}. For several times, loop over them "
            f"or use jax.vmap over {name}, e.g. jax.vmap(lambda s: mixture.diffuse(sde, s).log_prob(x))(ts)."
        )


def _symmetry_rtol(dtype) -> float:
    """Relative asymmetry tolerated in a covariance of input dtype ``dtype``: 100 ulps of the
    dtype (R Λ Rᵀ rounded in float32 is asymmetric at ~1e-8 relative), never below 1e-9."""
    eps = float(jnp.finfo(dtype).eps) if jnp.issubdtype(dtype, jnp.floating) else float(np.finfo(np.float64).eps)
    return max(100.0 * eps, 1e-9)


def _validate(weights, means, covariances) -> None:
    """Eager checks with messages that name the argument and the fix."""
    w = np.asarray(weights, dtype=np.float64)
    m = np.asarray(means, dtype=np.float64)
    c_in = np.asarray(covariances)
    c = c_in.astype(np.float64)
    if w.ndim != 1 or w.size == 0:
        raise ValueError(f"weights must be a non-empty 1-D array of shape (K,); got shape {w.shape}.")
    K = w.size
    if m.ndim != 2 or m.shape[0] != K or m.shape[1] == 0:
        raise ValueError(f"means must have shape (K, D) = ({K}, D) with D >= 1, to match weights; got shape {m.shape}.")
    D = m.shape[1]
    if c.shape != (K, D, D):
        raise ValueError(f"covariances must have shape (K, D, D) = ({K}, {D}, {D}); got shape {c.shape}.")
    for name, a in (("weights", w), ("means", m), ("covariances", c)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf; pass finite values.")
    if np.any(w < 0):
        raise ValueError(f"weights must be non-negative; got {w.tolist()}.")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"weights must sum to 1 (got {w.sum():.10g}); normalise them, e.g. weights / weights.sum().")
    rtol = _symmetry_rtol(c_in.dtype)
    for k in range(K):
        ck = c[k]
        asym, scale = float(np.max(np.abs(ck - ck.T))), float(np.max(np.abs(ck)))
        if asym > rtol * scale:
            raise ValueError(
                f"covariances[{k}] is not symmetric (max |C - C.T| = {asym:.3g}, tolerance {rtol:.3g} * max|C| "
                f"for {c_in.dtype} input); pass (C + C.T) / 2."
            )
        ev = np.linalg.eigvalsh(ck)
        if ev[0] <= 1e-12 * max(ev[-1], 1e-300):
            raise ValueError(
                f"covariances[{k}] is not positive definite (smallest eigenvalue {ev[0]:.3g}); "
                "add a small multiple of the identity."
            )


class GaussianMixture(eqx.Module):
    """Σ_k π_k N(μ_k, Σ_k) in any dimension, stored in each component's eigenbasis.

    Args:
        weights: (K,) non-negative, summing to 1 (within 1e-6; stored renormalised, log(w / Σ w)).
        means: (K, D).
        covariances: (K, D, D) symmetric positive definite (symmetric to 100 ulps of their dtype,
            relative to max |Σ_k|, never tighter than 1e-9; the symmetric part is used).

    Bad parameters raise ``ValueError`` naming the argument (checked when the arguments are
    concrete, i.e. not inside ``jit``).
    """

    log_weights: Float[Array, " K"]
    means: Float[Array, "K D"]
    eigvals: Float[Array, "K D"]
    eigvecs: Float[Array, "K D D"]

    def __init__(
        self,
        weights: Float[ArrayLike, " K"] | Sequence,
        means: Float[ArrayLike, "K D"] | Sequence,
        covariances: Float[ArrayLike, "K D D"] | Sequence,
    ):
        if _is_concrete(weights, means, covariances):
            _validate(weights, means, covariances)
        dtype = jnp.result_type(float)
        w = jnp.asarray(weights, dtype)
        c = jnp.asarray(covariances, dtype)
        self.log_weights = jnp.log(w) - jnp.log(jnp.sum(w))  # renormalised: a sum 1 ± 1e-6 would bias log q
        self.means = jnp.asarray(means, dtype)
        self.eigvals, self.eigvecs = jnp.linalg.eigh(0.5 * (c + jnp.swapaxes(c, -1, -2)))

    @classmethod
    def from_diagonal(cls, weights, means, variances) -> "GaussianMixture":
        """Mixture with diagonal covariances; ``variances`` has shape (K, D) (or (K,) for D = 1)."""
        means = np.asarray(means, dtype=np.float64)
        variances = np.asarray(variances, dtype=np.float64)
        if means.ndim == 1:
            means = means[:, None]
        if variances.ndim == 1:
            variances = variances[:, None]
        if variances.shape != means.shape:
            raise ValueError(f"variances must have the shape of means {means.shape}; got {variances.shape}.")
        if np.any(variances <= 0) or not np.all(np.isfinite(variances)):
            raise ValueError("variances must be finite and positive.")
        return cls(weights, means, np.einsum("kd,de->kde", variances, np.eye(means.shape[1])))

    # --- basic properties -------------------------------------------------------------
    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def weights(self) -> Float[Array, " K"]:
        return jnp.exp(self.log_weights)

    @property
    def covariances(self) -> Float[Array, "K D D"]:
        return jnp.einsum("kij,kj,klj->kil", self.eigvecs, self.eigvals, self.eigvecs)

    # --- diffusion ----------------------------------------------------------------------
    def diffuse(self, sde: SDE, t: float | Float[Array, ""]) -> "GaussianMixture":
        """The exact marginal q_t = Σ π_k N(α_t μ_k, α_t² Σ_k + σ_t² I) at a scalar time t
        (a t of ndim > 0 raises ``ValueError``: use a loop or ``jax.vmap`` over t)."""
        _check_scalar_time(t)
        t = jnp.asarray(check_time(sde, t))
        return self._diffuse(sde.mean_coeff(t), sde.variance(t))

    def _diffuse(self, alpha, var) -> "GaussianMixture":
        return eqx.tree_at(
            lambda m: (m.means, m.eigvals),
            self,
            (alpha * self.means, alpha**2 * self.eigvals + var),
        )

    def score_fn(self, sde: SDE) -> "MixtureScore":
        """The exact score (x, t) ↦ ∇ log q_t(x) as a PyTree callable (no recompilation per mixture)."""
        return MixtureScore(self, sde)

    # --- per-point quantities --------------------------------------------------------------
    def _terms(self, x):
        """For one x: log π_k + log N_k(x), y_k = U_kᵀ(x − μ_k), and g_k = ∇ log N_k(x)."""
        diff = x[None, :] - self.means  # (K, D)
        y = jnp.einsum("kji,kj->ki", self.eigvecs, diff)  # U_kᵀ (x − μ_k)
        log_n = -0.5 * (jnp.sum(y**2 / self.eigvals, -1) + jnp.sum(jnp.log(self.eigvals), -1) + self.dim * _LOG_2PI)
        g = -jnp.einsum("kij,kj->ki", self.eigvecs, y / self.eigvals)
        return self.log_weights + log_n, y, g

    def _precision_matvec(self, v):
        """P_k v = U_k Λ_k^{-1} U_kᵀ v for every k: (D,) → (K, D)."""
        return jnp.einsum("kij,kj,klj,l->ki", self.eigvecs, 1.0 / self.eigvals, self.eigvecs, v)

    def _log_prob1(self, x):
        return jax.nn.logsumexp(self._terms(x)[0])

    def _responsibilities1(self, x):
        return jax.nn.softmax(self._terms(x)[0])

    def _score1(self, x):
        logits, _, g = self._terms(x)
        return jax.nn.softmax(logits) @ g

    def _m2_and_score(self, x):
        logits, y, g = self._terms(x)
        w = jax.nn.softmax(logits)
        s = w @ g
        precisions = jnp.einsum("kij,kj,klj->kil", self.eigvecs, 1.0 / self.eigvals, self.eigvecs)
        m2 = jnp.einsum("k,ki,kj->ij", w, g, g) - jnp.einsum("k,kij->ij", w, precisions)
        return w, g, s, m2

    def _hessian1(self, x):
        _, _, s, m2 = self._m2_and_score(x)
        return m2 - jnp.outer(s, s)

    def _score_and_laplacian1(self, x):
        # Δ log q = Σ_k w_k (‖g_k‖² − tr P_k) − ‖s‖²  (trace of the Hessian formula above): O(K D²)
        logits, _, g = self._terms(x)
        w = jax.nn.softmax(logits)
        s = w @ g
        tr_p = jnp.sum(1.0 / self.eigvals, -1)
        return s, w @ (jnp.sum(g**2, -1) - tr_p) - jnp.sum(s**2)

    def _score_and_laplacian_batch(self, x: Float[Array, "N D"]) -> tuple[Float[Array, "N D"], Float[Array, " N"]]:
        """(∇ log q, Δ log q) for a batch, the formulas of :meth:`_score_and_laplacian1` laid out
        for XLA:CPU: the component axis leads, the batch axis is the contiguous one, and the
        products with the eigenbases are written out elementwise (D ≤ _UNROLL_DIM; above, the
        per-sample form is vmapped). XLA:CPU hands every dot to a library call whose fixed cost
        dwarfs a 2×2 product: in a compiled loop one evaluation for 8 points of a 2-D, 8-component
        mixture costs 0.7–1.1 µs instead of 2.0 µs, and 30 µs instead of 44 µs for 1000 points."""
        if self.dim > _UNROLL_DIM:  # dots pay off; the per-sample form vmapped was the faster one in a solve
            return jax.vmap(self._score_and_laplacian1)(x)
        inv_lam = 1.0 / self.eigvals  # (K, D)
        log_norm = self.log_weights - 0.5 * (jnp.sum(jnp.log(self.eigvals), -1) + self.dim * _LOG_2PI)  # (K,)
        d, u = self.dim, self.eigvecs
        diff = [x[:, j][None, :] - self.means[:, j][:, None] for j in range(d)]  # D × (K, N)
        y = [sum(u[:, j, i][:, None] * diff[j] for j in range(d)) for i in range(d)]  # U_kᵀ(x − μ_k)
        y_scaled = [y[i] * inv_lam[:, i][:, None] for i in range(d)]  # Λ_k^{-1} U_kᵀ(x − μ_k) = −U_kᵀ g_k
        quad = sum(y[i] * y_scaled[i] for i in range(d))
        sq_g = sum(v * v for v in y_scaled)  # ‖g_k‖²
        w = jax.nn.softmax(log_norm[:, None] - 0.5 * quad, axis=0)  # responsibilities, (K, N)
        s = jnp.stack([-jnp.sum(w * sum(u[:, e, i][:, None] * y_scaled[i] for i in range(d)), 0)
                       for e in range(d)], -1)  # (N, D)
        lap = jnp.sum(w * (sq_g - jnp.sum(inv_lam, -1)[:, None]), 0) - jnp.sum(s * s, -1)
        return s, lap

    def _grad_laplacian1(self, x):
        # THEORY.md §6.3: ∇Δ log q = Σ_k w_k[(‖g_k‖² − tr P_k) g_k − 2 P_k g_k] − (tr(M2) s + 2 M2 s) + 2‖s‖² s
        w, g, s, m2 = self._m2_and_score(x)
        tr_p = jnp.sum(1.0 / self.eigvals, -1)
        p_g = jnp.einsum("kij,kj,kj->ki", self.eigvecs, 1.0 / self.eigvals, jnp.einsum("kji,kj->ki", self.eigvecs, g))
        first = w @ ((jnp.sum(g**2, -1) - tr_p)[:, None] * g - 2.0 * p_g)
        return first - (jnp.trace(m2) * s + 2.0 * m2 @ s) + 2.0 * jnp.sum(s**2) * s

    @eqx.filter_jit
    def log_prob(self, x: Float[ArrayLike, "*batch D"]) -> Float[Array, "*batch"]:
        """log q(x), by logsumexp over components."""
        x = _check_points(x, self.dim)
        return jnp.vectorize(self._log_prob1, signature="(d)->()")(x)

    @eqx.filter_jit
    def responsibilities(self, x: Float[ArrayLike, "*batch D"]) -> Float[Array, "*batch K"]:
        """Posterior component probabilities w_k(x) ∝ π_k N(x; μ_k, Σ_k)."""
        x = _check_points(x, self.dim)
        return jnp.vectorize(self._responsibilities1, signature="(d)->(k)")(x)

    @eqx.filter_jit
    def score(self, x: Float[ArrayLike, "*batch D"]) -> Float[Array, "*batch D"]:
        """∇ log q(x) = Σ_k w_k(x) g_k(x), g_k = −Σ_k^{-1}(x − μ_k)."""
        x = _check_points(x, self.dim)
        return jnp.vectorize(self._score1, signature="(d)->(d)")(x)

    @eqx.filter_jit
    def hessian(self, x: Float[ArrayLike, "*batch D"]) -> Float[Array, "*batch D D"]:
        """∇² log q(x) = Σ_k w_k (g_k g_kᵀ − Σ_k^{-1}) − s sᵀ."""
        x = _check_points(x, self.dim)
        return jnp.vectorize(self._hessian1, signature="(d)->(d,d)")(x)

    @eqx.filter_jit
    def laplacian(self, x: Float[ArrayLike, "*batch D"]) -> Float[Array, "*batch"]:
        """Δ log q(x) = tr ∇² log q(x) = Σ_k w_k(‖g_k‖² − tr Σ_k^{-1}) − ‖s‖², in O(K D²)."""
        x = _check_points(x, self.dim)
        return jnp.vectorize(lambda z: self._score_and_laplacian1(z)[1], signature="(d)->()")(x)

    @eqx.filter_jit
    def grad_laplacian(self, x: Float[ArrayLike, "*batch D"]) -> Float[Array, "*batch D"]:
        """∇ tr ∇² log q(x): the third-order quantity of Lu et al. 2022 (§4, Eq. 15)."""
        x = _check_points(x, self.dim)
        return jnp.vectorize(self._grad_laplacian1, signature="(d)->(d)")(x)

    def sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n D"]:
        """n independent draws (``n`` a non-negative integer, Python or NumPy: it is a static shape)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer number of samples; got {n!r}.")
        return self._sample(key, int(n))

    @eqx.filter_jit
    def _sample(self, key, n: int):
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.categorical(k_comp, self.log_weights, shape=(n,))
        z = jax.random.normal(k_noise, (n, self.dim), dtype=self.means.dtype)
        return self.means[comp] + jnp.einsum("nij,nj->ni", self.eigvecs[comp], jnp.sqrt(self.eigvals[comp]) * z)

    # --- posterior of x_0 given x_t (this mixture is the data q_0) ---------------------------------
    def posterior(self, sde: SDE, t, x_t: Float[ArrayLike, "*batch D"]):
        """Exact law of x_0 | x_t: a mixture with weights w_k(x_t) (responsibilities under q_t),
        means m_k = S_k(Σ_k^{-1} μ_k + α x_t/σ²) and covariances S_k = (Σ_k^{-1} + α²/σ² I)^{-1}
        (THEORY.md §6.3). Returns (weights (*batch, K), means (*batch, K, D), covariances (K, D, D)).
        Requires σ_t > 0 and a scalar t.
        """
        _check_scalar_time(t)
        _check_points(x_t, self.dim, "x_t")
        t = jnp.asarray(check_time(sde, t))
        if not isinstance(t, jax.core.Tracer) and not float(sde.variance(t)) > 0:
            raise ValueError(f"t={float(t):g}: the posterior of x_0 given x_t needs σ_t > 0 (at σ_t = 0, x_0 = x_t/α_t "
                             "exactly); pass a t with noise, e.g. t >= sde.t_min > 0.")
        return self._posterior(sde, t, jnp.asarray(x_t))

    @eqx.filter_jit
    def _posterior(self, sde, t, x_t):
        alpha, var = sde.mean_coeff(t), sde.variance(t)
        q_t = self._diffuse(alpha, var)
        post_eig = self.eigvals * var / (var + alpha**2 * self.eigvals)  # eigenvalues of S_k
        cov = jnp.einsum("kij,kj,klj->kil", self.eigvecs, post_eig, self.eigvecs)

        def one(x):
            w = q_t._responsibilities1(x)
            rhs_eig = jnp.einsum("kji,kj->ki", self.eigvecs, self.means) / self.eigvals + alpha / var * jnp.einsum(
                "kji,j->ki", self.eigvecs, x
            )
            m = jnp.einsum("kij,kj->ki", self.eigvecs, post_eig * rhs_eig)
            return w, m

        return (*jnp.vectorize(one, signature="(d)->(k),(k,d)")(x_t), cov)

    def denoiser(self, sde: SDE, t, x_t: Float[ArrayLike, "*batch D"]) -> Float[Array, "*batch D"]:
        """E[x_0 | x_t] = (x_t + σ_t² ∇log q_t(x_t)) / α_t (Tweedie; Efron 2011), exact; t a scalar."""
        _check_scalar_time(t)
        _check_points(x_t, self.dim, "x_t")
        return self._denoiser(sde, jnp.asarray(check_time(sde, t)), jnp.asarray(x_t))

    @eqx.filter_jit
    def _denoiser(self, sde, t, x_t):
        alpha, var = sde.mean_coeff(t), sde.variance(t)
        return (x_t + var * self._diffuse(alpha, var).score(x_t)) / alpha


class MixtureScore(eqx.Module):
    """(x, t) ↦ ∇ log q_t(x) for a data mixture q_0 under an SDE; a PyTree, so passing another
    mixture of the same shapes to a jitted likelihood does not recompile."""

    mixture: GaussianMixture
    sde: SDE

    # XLA options for a compiled likelihood solve of this score (read by numerics.likelihood): send
    # only dots and convolutions to XLA:CPU's YNNPACK library, not the small reductions over the
    # components, whose library calls cost more than the loop XLA writes itself (1000 2-D points,
    # 8 components: 36 → 27 ms per solve at rtol = atol = 1e-9). Not a process-wide flag: it
    # slows a convolutional network's forward pass by ~20%.
    xla_compiler_options: ClassVar[dict[str, str]] = {
        "xla_cpu_experimental_ynn_fusion_type":
            "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
    }

    def _at(self, t) -> GaussianMixture:
        return self.mixture._diffuse(self.sde.mean_coeff(t), self.sde.variance(t))

    def _point(self, x, ndim: int | None = None) -> Array:
        """``x`` with its last axis (and, if given, its number of axes) checked — static, so free inside
        jit: a wrong D would otherwise be read with JAX's clamped indexing or broadcast, silently
        giving another point's score."""
        x = _check_points(x, self.mixture.dim)
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"x must have shape (N, D) with D={self.mixture.dim}; got shape {tuple(x.shape)}.")
        return x

    def __call__(self, x: Float[Array, " D"], t) -> Float[Array, " D"]:
        return self._at(t)._score1(self._point(x))

    def score_and_divergence(self, x: Float[Array, " D"], t) -> tuple[Float[Array, " D"], Float[Array, ""]]:
        """(∇ log q_t(x), Δ log q_t(x)) in closed form: the exact divergence for
        :func:`numerics.likelihood.ode_log_likelihood` at O(K D²) instead of D Jacobian-vector products."""
        return self._at(t)._score_and_laplacian1(self._point(x))

    def score_and_divergence_batch(self, x: Float[Array, "N D"], t) -> tuple[Float[Array, "N D"], Float[Array, " N"]]:
        """:meth:`score_and_divergence` for a batch at one time t, laid out for a batch (see
        ``GaussianMixture._score_and_laplacian_batch``); used by the shared-step likelihood."""
        return self._at(t)._score_and_laplacian_batch(self._point(x, 2))
