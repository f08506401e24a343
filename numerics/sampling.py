"""Samplers for any score function s(x, t) (ONE sample) and any linear SDE: batched, jit-compiled,
keys explicit, from ``sde.T`` down to ``sde.t_min``.

* :func:`euler_maruyama_sample` — the reverse-time SDE (Anderson 1982; Song et al. ICLR'21, Eq. 6)

      dx = [f(t) x − g(t)² s(x, t)] dt + g(t) dw̄,

  discretised by Euler–Maruyama on a uniform grid (noise added at every step, the last included);
  O(1/n) bias needs g² bounded on [t_min, T] (not Li & Yan's SDE, singular at T).
* :func:`predictor_corrector_sample` — Song et al. ICLR'21 Alg. 1–3: at each grid time t, Langevin
  corrector steps for q_t, then the reverse-diffusion predictor to the next time. The predictor
  reverses the *exact* forward kernel of the step, x_t = a x_s + b z with a = α_t/α_s,
  b² = σ_t² − a²σ_s²:  x_s = (2 − a) x_t + b² s(x_t, t) + b z  (score_sde's VP/VE reverse-diffusion
  predictors are this with their discretisations). The corrector uses the step
  2 a² (r ‖z‖/‖s‖)² with the norms averaged over the batch, as in the public code (a² plays the
  role of its α_i = 1 − β_i for VP and is 1 for VE).
* :func:`ode_sample` — the probability-flow ODE dx/dt = f x − ½ g² s (Song et al. ICLR'21, Eq. 13)
  from T to t_min by adaptive Tsit5 (diffrax), each sample with its own steps; failures raise
  :class:`numerics.likelihood.SolverError` (as do non-finite samples at the end of the other two). It is the inverse of the map whose log-determinant
  :func:`numerics.likelihood.ode_log_likelihood` integrates.

``denoise=True`` ends with Tweedie's step x̂_0 = (x + σ_{t_min}² s(x, t_min))/α_{t_min}
(Efron 2011), i.e. E[x_0 | x_{t_min}] for the exact score — a denoised point, not a sample of q_0.
Start points x_T (shape (N, *event)) are passed in: ``sde.prior_sample`` or, for exactness tests,
samples of the exact q_T.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from numerics.likelihood import check_finite_samples, check_integer, check_rows, check_solves, finite_rows, solve_evaluations
from numerics.sde import SDE

__all__ = [
    "ODESampleResult",
    "time_grid",
    "tweedie_denoise",
    "euler_maruyama_sample",
    "predictor_corrector_sample",
    "ode_sample",
]


def _score_batch(score_fn: Callable, x: Array, t: Array) -> Array:
    return jax.vmap(score_fn, in_axes=(0, None))(x, t).astype(x.dtype)


def _check_start(x_T) -> Array:
    """``x_T`` checked: a floating JAX array (N, *event) whose rows are finite (a ValueError naming
    x_T; inside a caller's jit the check travels with the returned array)."""
    if not isinstance(x_T, jax.Array) or x_T.ndim < 2:
        shape = getattr(x_T, "shape", None)
        raise ValueError(f"x_T must be a JAX array of shape (N, *event) with a batch axis; got shape {shape}.")
    if not jnp.issubdtype(x_T.dtype, jnp.floating):
        raise ValueError(f"x_T must be floating point; got dtype {x_T.dtype}.")
    return check_finite_samples(x_T, "x_T")


def _check_chain(x: Array, ok: Array, n_bad: Array, what: str) -> Array:
    """``x`` unless a fixed-step sampler's chain left non-finite samples (``ok`` False in ``n_bad`` rows):
    then a :class:`SolverError` (:func:`numerics.likelihood.check_rows`). The start was checked
    finite, so the score (or a step too large for the SDE) produced them."""
    return check_rows(x, ok, lambda k: (
        f"{what} produced non-finite samples (NaN or inf) in {k} of {x.shape[0]} rows, from a finite x_T: "
        "the score function returned NaN/inf along the chain, or a step was too coarse for the SDE. "
        "Check score_fn at small t and near T, or use more n_steps."), n_bad=n_bad)


def time_grid(sde: SDE, n_steps: int, dtype=None) -> Float[Array, " n"]:
    """The n_steps + 1 uniform times T = t_0 > … > t_n = t_min."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    return jnp.linspace(sde.T, sde.t_min, n_steps + 1, dtype=dtype)


def tweedie_denoise(score_fn: Callable, sde: SDE, x: Float[Array, "N *event"], t) -> Float[Array, "N *event"]:
    """x̂_0 = (x + σ_t² s(x, t))/α_t for a batch at one time t (Tweedie; THEORY.md §2.7's decoder mean)."""
    t = jnp.asarray(t, x.dtype)
    alpha, var = sde.mean_coeff(t).astype(x.dtype), sde.variance(t).astype(x.dtype)
    return (x + var * _score_batch(score_fn, x, t)) / alpha


def _reverse_chain(step: Callable, score_fn, sde, x_T, key, n_steps: int, denoise: bool):
    """x ← step(x, t, t_next, key) over the uniform grid from T to t_min (one key per step), then
    the optional Tweedie denoising at t_min: the loop shared by the reverse-time samplers."""
    ts = time_grid(sde, n_steps, x_T.dtype)
    inputs = (ts[:-1], ts[1:], jax.random.split(key, n_steps))
    x, _ = jax.lax.scan(lambda x, inp: (step(x, *inp), None), x_T, inputs)
    x = tweedie_denoise(score_fn, sde, x, ts[-1]) if denoise else x
    ok = finite_rows(x)  # computed inside the sampler's program
    return x, ok, jnp.sum(~ok)


@eqx.filter_jit
def _euler_maruyama(score_fn, sde, x_T, key, n_steps, denoise):
    def step(x, t, t_next, k):
        dt = t - t_next
        f, g2 = sde.drift_coeff(t).astype(x.dtype), sde.diffusion_sq(t).astype(x.dtype)
        drift = f * x - g2 * _score_batch(score_fn, x, t)
        return x - drift * dt + jnp.sqrt(g2 * dt) * jax.random.normal(k, x.shape, x.dtype)

    return _reverse_chain(step, score_fn, sde, x_T, key, n_steps, denoise)


def euler_maruyama_sample(
    score_fn: Callable,
    sde: SDE,
    x_T: Float[Array, "N *event"],
    key: PRNGKeyArray,
    *,
    n_steps: int = 1000,
    denoise: bool = False,
) -> Float[Array, "N *event"]:
    """Euler–Maruyama for the reverse SDE on ``n_steps`` uniform steps from T to t_min (Song et al.
    ICLR'21, Eq. 6). ``score_fn(x, t)`` takes one sample. Returns samples of ≈ q_{t_min} (or their
    Tweedie means with ``denoise=True``).

    Discretisation bias is O(1/n_steps) only when g² (and f) are bounded on [t_min, T], as for the VP
    and VE SDEs. Each step uses f, g² at its start time t, so a g² that is singular at T breaks it:
    for :class:`numerics.sde.LiYanSDE` (g² = 1/(1 − t), T = 1 − 10⁻⁶) the first step injects noise of
    variance g²(T)·h ≈ 10⁶·10⁻³ at ``n_steps=1000``, and with the exact score of data N(0.7, 0.16) the
    samples' variance is ≈ 2.2 instead of 0.16. Use :func:`predictor_corrector_sample` (its predictor
    reverses the exact step kernel) or :func:`ode_sample` for such SDEs.

    Raises ValueError for a non-finite x_T and :class:`numerics.likelihood.SolverError` when the chain
    ends with non-finite samples (a NaN/inf score; inside a caller's jit, an equinox runtime error)."""
    x_T = _check_start(x_T)
    n_steps = check_integer("n_steps", n_steps)
    return _check_chain(*_euler_maruyama(score_fn, sde, x_T, key, n_steps, bool(denoise)), "Euler–Maruyama sampling")


@eqx.filter_jit
def _predictor_corrector(score_fn, sde, x_T, key, n_steps, n_corrector, snr, denoise):
    batch = x_T.shape[0]

    def norms(a):
        return jnp.mean(jnp.sqrt(jnp.sum(a.reshape(batch, -1) ** 2, axis=-1)))

    def step(x, t, t_next, k):
        a = (sde.mean_coeff(t) / sde.mean_coeff(t_next)).astype(x.dtype)
        b2 = (sde.variance(t) - a**2 * sde.variance(t_next)).astype(x.dtype)
        k_corr, k_pred = jax.random.split(k)

        def corrector(j, x):
            s = _score_batch(score_fn, x, t)
            z = jax.random.normal(jax.random.fold_in(k_corr, j), x.shape, x.dtype)
            step_size = 2 * a**2 * (snr * norms(z) / norms(s)) ** 2
            return x + step_size * s + jnp.sqrt(2 * step_size) * z

        x = jax.lax.fori_loop(0, n_corrector, corrector, x)
        s = _score_batch(score_fn, x, t)
        return (2 - a) * x + b2 * s + jnp.sqrt(b2) * jax.random.normal(k_pred, x.shape, x.dtype)

    return _reverse_chain(step, score_fn, sde, x_T, key, n_steps, denoise)


def predictor_corrector_sample(
    score_fn: Callable,
    sde: SDE,
    x_T: Float[Array, "N *event"],
    key: PRNGKeyArray,
    *,
    n_steps: int = 1000,
    n_corrector: int = 1,
    snr: float = 0.16,
    denoise: bool = False,
) -> Float[Array, "N *event"]:
    """Predictor–corrector sampling (Song et al. ICLR'21, Alg. 1–3): reverse-diffusion predictor on the
    exact step kernel and ``n_corrector`` Langevin steps with signal-to-noise ratio ``snr`` (r) per
    grid time. ``n_corrector=0`` gives the reverse-diffusion (ancestral-type) sampler alone.

    Raises ValueError for a non-finite x_T and :class:`numerics.likelihood.SolverError` when the chain
    ends with non-finite samples (as :func:`euler_maruyama_sample`)."""
    x_T = _check_start(x_T)
    n_steps = check_integer("n_steps", n_steps)
    n_corrector = check_integer("n_corrector", n_corrector, minimum=0)
    if not snr > 0:
        raise ValueError(f"snr must be positive; got {snr!r}.")
    out = _predictor_corrector(score_fn, sde, x_T, key, n_steps, n_corrector, float(snr), bool(denoise))
    return _check_chain(*out, "predictor–corrector sampling")


class ODESampleResult(eqx.Module):
    """Output of :func:`ode_sample`: ``samples`` (N, *event) at t_min (Tweedie-denoised if asked) and
    ``nfe`` (N,), score evaluations of each adaptive solve."""

    samples: Float[Array, "N *event"]
    nfe: Int[Array, " N"]


def _ode_one(score_fn, sde, x, *, rtol, atol, solver, max_steps):
    def vector_field(t, y, args):
        s = score_fn(y, t).astype(y.dtype)
        return sde.drift_coeff(t).astype(y.dtype) * y - 0.5 * sde.diffusion_sq(t).astype(y.dtype) * s

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        solver,
        t0=jnp.asarray(sde.T, x.dtype),
        t1=jnp.asarray(sde.t_min, x.dtype),
        dt0=None,
        y0=x,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps,
        throw=False,
    )
    y = sol.ys[-1].astype(x.dtype)
    ok = (sol.result == diffrax.RESULTS.successful) & jnp.all(jnp.isfinite(y))
    return y, sol.stats["num_steps"], ok


@eqx.filter_jit
def _ode_batch(score_fn, sde, x_T, tols, solver, max_steps):
    """``tols`` = (rtol, atol) is traced: a new tolerance does not recompile."""
    return jax.vmap(lambda x: _ode_one(score_fn, sde, x, rtol=tols[0], atol=tols[1], solver=solver, max_steps=max_steps))(x_T)


def ode_sample(
    score_fn: Callable,
    sde: SDE,
    x_T: Float[Array, "N *event"],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    solver: diffrax.AbstractSolver | None = None,
    max_steps: int = 16384,
    denoise: bool = False,
) -> ODESampleResult:
    """Transport x_T by the probability-flow ODE from T to t_min (Song et al. ICLR'21, Eq. 13; adaptive,
    default Tsit5). Deterministic: no key. Raises :class:`SolverError` (inside a caller's ``jit``, an
    equinox runtime error) when a solve reaches ``max_steps`` or produces a non-finite value."""
    x_T = _check_start(x_T)
    max_steps = check_integer("max_steps", max_steps)
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive; got rtol={rtol}, atol={atol}.")
    solver = diffrax.Tsit5() if solver is None else solver
    y, num_steps, ok = _ode_batch(score_fn, sde, x_T, np.asarray([rtol, atol], dtype=x_T.dtype), solver, max_steps)
    y = check_solves(y, ok, what="probability-flow ODE sampling", max_steps=max_steps)
    if denoise:
        y = tweedie_denoise(score_fn, sde, y, sde.t_min)
    return ODESampleResult(samples=y, nfe=solve_evaluations(solver, num_steps))
