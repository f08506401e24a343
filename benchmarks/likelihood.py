"""In-graph likelihood vs host-driven ``scipy.integrate.solve_ivp`` at MATCHED worst-case accuracy.

    .venv/bin/python benchmarks/likelihood.py [--quick] [--json PATH] [--one-core]

Compares :func:`numerics.likelihood.ode_log_likelihood` (diffrax, adaptive steps shared by the batch
under the worst sample's error norm, one compiled call with one host synchronisation) with the approach of the public
ScoreFlow code: the whole batch is ONE flattened system y = concat(x of all samples, per-sample
log-det accumulators), integrated by ``scipy.integrate.solve_ivp`` on the host; its right-hand side
is one ``jax.jit`` function of (t, y) that returns (dx, divergence term) for the whole batch and is
converted to numpy at every evaluation.

Identical vector field: both sides evaluate the probability-flow field through the SAME function,
:func:`numerics.likelihood.probability_flow_field` (for the exact mixture score, ``MixtureScore``,
its batched closed-form score and Laplacian in O(K·D²)); the scipy right-hand side calls it on the
unflattened batch inside its jitted function. Both also share the exact prior (log q_T =
``mixture.diffuse(sde, sde.T).log_prob``), float64 and the VP SDE. The error of a sample is
|log p_ODE(x) − log q_{t_min}(x)| against the exact mixture density (an independent truth); the
figure of merit is the WORST per-sample error, because one step size over a flattened batch only
controls an average (RMS) error.

Solvers: the in-graph approach chooses its solver, so "ours" is measured with diffrax ``Tsit5``
(the default of ``ode_log_likelihood``) and ``Dopri8`` (8th order); the baseline is scipy ``RK45``
(as in the public code) and, so that the comparison stays fair, scipy ``DOP853`` too. Ratios
t_scipy / t_ours are reported for Tsit5 vs RK45, Dopri8 vs RK45, "best of ours" (the Pareto
frontier of Tsit5 ∪ Dopri8) vs RK45, and best of ours vs "best of scipy" (RK45 ∪ DOP853); the
summary states, per pairing, whether the target speed-up is met at every common error level.

For each case and solver the script sweeps tolerances (rtol = atol), prints the error–time frontier
(worst and mean error, wall and CPU time, NFE), and compares times at EQUAL worst-case error: each
frontier is reduced to its Pareto points and interpolated piecewise-linearly in log-log (log time
as a function of log worst error); the ratio is reported at the decades of error that both
frontiers reach. Wall-time ratios are primary; the same ratios by process CPU time are printed
alongside (the machine may be shared: CPU time is the less load-sensitive figure). ``--one-core``
pins the process to one CPU for both methods (XLA's thread pool then never waits for a descheduled
worker). A per-evaluation cost section isolates the vector field: one scipy right-hand-side call
(device call + numpy conversion), the same batched field evaluated in a compiled loop (pure
compute), scipy's remaining per-evaluation host overhead, and ours' time per evaluation.

Timing: rtol, atol and t_start are traced in ``ode_log_likelihood``, so ONE warm-up call per case
and solver compiles it for every tolerance; scipy's right-hand side is compiled once for all
tolerances and methods, and a full warm-up solve is run per method. Then each configuration is
timed with ``time.perf_counter`` (and ``time.process_time``) around the complete call including
``block_until_ready`` / conversion to numpy, repeated while cheap (at most 7 times or about 1.5 s),
and the MINIMUM is reported (the median is kept in the JSON). Backend compilations during the timed
calls are counted with ``jax.monitoring``; any is an error.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import diffrax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import numerics  # noqa: E402  (enables float64)
from benchmarks._compiles import compile_count  # noqa: E402
from numerics.__main__ import demo_mixture  # noqa: E402
from numerics.likelihood import ode_log_likelihood, probability_flow_field  # noqa: E402

__all__ = [
    "Case",
    "ScipyFlatODE",
    "OURS_SOLVERS",
    "PAIRINGS",
    "SCIPY_METHODS",
    "best_time",
    "compare_frontiers",
    "error_range",
    "eval_costs",
    "demo_case",
    "highdim_case",
    "interp_time",
    "main",
    "make_case",
    "measure_ours",
    "measure_scipy",
    "ours_log_prob",
    "pareto",
    "run_case",
]

TOLS_OURS = [10.0 ** (-e / 2) for e in range(6, 19)]  # Tsit5: 1e-3 … 1e-9, half decades
TOLS_DOPRI8 = [10.0 ** (-e / 2) for e in range(6, 21)]  # Dopri8: 1e-3 … 1e-10
TOLS_SCIPY = [10.0 ** (-e / 2) for e in range(6, 23)]  # RK45: 1e-3 … 1e-11
TOLS_DOP853 = [10.0 ** (-e / 2) for e in range(6, 23)]  # DOP853: 1e-3 … 1e-11
QUICK_TOLS_OURS = [1e-3, 1e-5, 1e-7]
QUICK_TOLS_DOPRI8 = [1e-4, 1e-7]
QUICK_TOLS_SCIPY = [1e-3, 1e-5, 1e-7, 1e-9]
QUICK_TOLS_DOP853 = [1e-5, 1e-9]

# --- cases ---------------------------------------------------------------------------------------
@dataclass
class Case:
    """One benchmark problem: data x, the exact truth, and what both methods share."""

    name: str
    mixture: numerics.GaussianMixture
    sde: numerics.SDE
    x: jax.Array  # (N, D)
    exact: np.ndarray  # log q_{t_min}(x), (N,)
    score_fn: Callable  # exact score (x, t) -> ∇ log q_t(x), one sample
    prior_log_prob: Callable  # exact log q_T, one sample
    target: float  # required speed-up at matched worst-case error

    @property
    def batch(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])


def make_case(name: str, mixture: numerics.GaussianMixture, sde: numerics.SDE, n: int, *, seed: int = 0,
              target: float = float("nan")) -> Case:
    """n points drawn from the data mixture, with the exact log-density at t_min as truth."""
    x = mixture.sample(jax.random.key(seed), n)
    exact = np.asarray(mixture.diffuse(sde, sde.t_min).log_prob(x))
    return Case(name=name, mixture=mixture, sde=sde, x=x, exact=exact, score_fn=mixture.score_fn(sde),
                prior_log_prob=mixture.diffuse(sde, sde.T).log_prob, target=target)


def demo_case(batch: int, *, seed: int = 0, target: float = float("nan")) -> Case:
    """The built-in 2-D 8-component ring mixture (``numerics.__main__.demo_mixture``), VP SDE."""
    return make_case(f"2-D, 8 comp., batch {batch}", demo_mixture(), numerics.VPSDE(), batch, seed=seed,
                     target=target)


def random_mixture(dim: int, n_components: int, *, seed: int = 0, eig_range=(0.1, 1.0),
                   mean_scale: float = 0.5) -> numerics.GaussianMixture:
    """Equal-weight mixture with random rotations and eigenvalues in ``eig_range`` (condition ≤ 10)."""
    rng = np.random.default_rng(seed)
    covs = []
    for _ in range(n_components):
        q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
        q = q * np.sign(np.diag(r))
        lam = rng.uniform(*eig_range, size=dim)
        c = (q * lam) @ q.T
        covs.append(0.5 * (c + c.T))
    means = mean_scale * rng.standard_normal((n_components, dim))
    return numerics.GaussianMixture(np.full(n_components, 1.0 / n_components), means, np.array(covs))


def highdim_case(batch: int, *, dim: int = 100, n_components: int = 4, seed: int = 0,
                 target: float = float("nan")) -> Case:
    """A D-dimensional (default 100) K-component mixture with well-conditioned random covariances."""
    mixture = random_mixture(dim, n_components, seed=seed)
    return make_case(f"{dim}-D, {n_components} comp., batch {batch}", mixture, numerics.VPSDE(), batch,
                     seed=seed + 1, target=target)


# --- the two methods -------------------------------------------------------------------------------
OURS_SOLVERS = {"Tsit5": diffrax.Tsit5(), "Dopri8": diffrax.Dopri8()}  # built once, as a caller would
SCIPY_METHODS = ("RK45", "DOP853")


def ours_log_prob(case: Case, tol: float, *, solver: str = "Tsit5", divergence: str = "exact", key=None):
    """The in-graph likelihood. Returns (log p as numpy (N,), nfe as numpy (N,))."""
    kw = {} if divergence == "exact" else dict(divergence="hutchinson", n_probes=1, key=key)
    res = ode_log_likelihood(case.score_fn, case.sde, case.x, rtol=tol, atol=tol, solver=OURS_SOLVERS[solver],
                             prior_log_prob=case.prior_log_prob, **kw)
    return np.asarray(res.log_prob.block_until_ready()), np.asarray(res.nfe)


class ScipyFlatODE:
    """ScoreFlow-style likelihood: one flattened system, ``solve_ivp`` (RK45 or DOP853) on the host,
    one jitted device call (dx and divergence of the whole batch) per function evaluation.

    The field is the one of ``ode_log_likelihood``: :func:`numerics.likelihood.probability_flow_field`
    on the batch inside the jitted right-hand side (exact trace, or for Hutchinson vᵀ(∂s/∂x)v with one
    probe per sample).
    The right-hand side is compiled once (:meth:`warmup`); t is always passed as ``np.float64`` and y
    as a float64 array of fixed shape, so it never recompiles across tolerances or methods.
    """

    def __init__(self, case: Case, *, divergence: str = "exact", probes=None):
        if divergence not in ("exact", "hutchinson"):
            raise ValueError(f"divergence must be 'exact' or 'hutchinson'; got {divergence!r}.")
        if divergence == "hutchinson" and probes is None:
            raise ValueError("probes (N, D) are required for divergence='hutchinson'.")
        self.case = case
        n, d = case.batch, case.dim
        self.n, self.d = n, d
        score_fn, sde = case.score_fn, case.sde
        exact = divergence == "exact"
        probes = jnp.zeros((n, d)) if probes is None else jnp.asarray(probes)

        flow = probability_flow_field(score_fn, sde, None if exact else probes[:, None])

        def field(t, y):
            x = y[: n * d].reshape(n, d)
            dx, ddelta = flow(t, x)
            return jnp.concatenate([dx.reshape(-1), ddelta.reshape(-1)])

        self._field = field
        self._vf = jax.jit(field)
        self._prior = jax.jit(jax.vmap(case.prior_log_prob))

    def fun(self, t, y):
        """The right-hand side handed to scipy: host numpy in, host numpy out."""
        return np.asarray(self._vf(np.float64(t), np.asarray(y, dtype=np.float64)))

    def cache_size(self) -> int:
        """Compiled versions of the right-hand side (1 after any number of solves)."""
        return self._vf._cache_size()

    def warmup(self) -> None:
        y0 = self.initial_state()
        self.fun(self.case.sde.t_min, y0)
        self._prior(np.zeros((self.n, self.d))).block_until_ready()

    def initial_state(self) -> np.ndarray:
        return np.concatenate([np.asarray(self.case.x, dtype=np.float64).reshape(-1), np.zeros(self.n)])

    def solve(self, tol: float, method: str = "RK45"):
        """Returns (log p as numpy (N,), nfev of the flattened solve)."""
        sde = self.case.sde
        sol = solve_ivp(self.fun, (sde.t_min, sde.T), self.initial_state(), method=method, rtol=tol, atol=tol)
        if sol.status != 0:
            raise RuntimeError(f"solve_ivp({method}) failed at tol={tol:g}: {sol.message}")
        z = sol.y[:, -1]
        x_T = z[: self.n * self.d].reshape(self.n, self.d)
        log_p = np.asarray(self._prior(x_T)) + z[self.n * self.d:]
        return log_p, int(sol.nfev)


# --- timing and frontiers ------------------------------------------------------------------------
def _timed(fn: Callable, *, max_reps: int = 5, budget_s: float = 1.0):
    """Times fn() (already warmed up) repeatedly while cheap.

    Returns (last output, [wall seconds], [process CPU seconds], backend compilations meanwhile).
    """
    times, cpus, out = [], [], None
    c0 = compile_count()
    while True:
        p0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - p0)
        if len(times) >= max_reps or sum(times) + times[-1] > budget_s:
            break
    return out, times, cpus, compile_count() - c0


def _point(tol, log_p, exact, times, cpus, compiles, nfe_mean, nfe_max, compile_s=None) -> dict:
    err = np.abs(np.asarray(log_p) - exact)
    return dict(tol=tol, max_err=float(np.max(err)) if np.all(np.isfinite(err)) else float("inf"),
                mean_err=float(np.mean(err)), time_s=float(min(times)), time_median_s=float(statistics.median(times)),
                cpu_s=float(min(cpus)), reps=len(times), nfe_mean=float(nfe_mean), nfe_max=float(nfe_max),
                compiles_in_timed=int(compiles), first_call_s=compile_s)


def _check_no_compiles(label: str, points: Sequence[dict]) -> None:
    bad = [p["tol"] for p in points if p["compiles_in_timed"]]
    if bad:
        raise RuntimeError(f"{label}: backend compilations during timed calls at tol {bad}; expected none.")


def measure_ours(case: Case, tols: Sequence[float], *, solver: str = "Tsit5", max_reps: int = 5,
                 budget_s: float = 1.0, divergence: str = "exact", key=None) -> list[dict]:
    """Frontier of the in-graph likelihood: ONE warm-up (compiling) call — tolerances are traced —
    then timed calls per tolerance; any compilation during them raises."""
    run = lambda tol: ours_log_prob(case, tol, solver=solver, divergence=divergence, key=key)  # noqa: E731
    t0 = time.perf_counter()
    run(max(tols))
    first = time.perf_counter() - t0
    points = []
    for tol in tols:
        (log_p, nfe), times, cpus, compiles = _timed(lambda: run(tol), max_reps=max_reps, budget_s=budget_s)
        points.append(_point(tol, log_p, case.exact, times, cpus, compiles, nfe.mean(), nfe.max(), first))
        first = None
    _check_no_compiles(f"ours ({solver})", points)
    return points


def measure_scipy(case: Case, tols: Sequence[float], *, method: str = "RK45", max_reps: int = 5,
                  budget_s: float = 1.0, solver: ScipyFlatODE | None = None) -> list[dict]:
    """Frontier of the host-driven flattened solve (right-hand side compiled once for all tols)."""
    solver = ScipyFlatODE(case) if solver is None else solver
    t0 = time.perf_counter()
    solver.warmup()
    solver.solve(max(tols), method)  # full warm-up solve
    first = time.perf_counter() - t0
    points = []
    for tol in tols:
        (log_p, nfev), times, cpus, compiles = _timed(lambda: solver.solve(tol, method), max_reps=max_reps,
                                                      budget_s=budget_s)
        points.append(_point(tol, log_p, case.exact, times, cpus, compiles, nfev, nfev, first))
        first = None
    _check_no_compiles(f"scipy ({method})", points)
    if solver.cache_size() != 1:
        raise RuntimeError(f"scipy right-hand side compiled {solver.cache_size()} times; expected once.")
    return points


def eval_costs(case: Case, solver: ScipyFlatODE, *, loop: int = 200, reps: int = 7) -> dict:
    """Per-evaluation cost of the batched vector field, isolated (microseconds, min over reps):

    ``rhs_call_us``: one scipy right-hand-side call (jitted device call + numpy conversion, on host);
    ``rhs_compute_us``: the same batched field evaluated ``loop`` times inside one compiled
    ``fori_loop`` (pure compute, no dispatch or conversion), per evaluation;
    ``ours_call_floor_us``: one complete in-graph call (Tsit5, as timed in the frontier: validation,
    dispatch, solver set-up, prior, result transfer) over the tiny interval [T(1 − 1e-9), T], where
    it takes a single step — the fixed cost that no tolerance can remove.
    """
    y0 = solver.initial_state()
    t = np.float64(0.5 * (case.sde.t_min + case.sde.T))

    @jax.jit
    def looped(y):
        def body(i, acc):
            return acc + 1e-30 * solver._field(t + 1e-9 * i, y + 1e-30 * acc)
        return jax.lax.fori_loop(0, loop, body, jnp.zeros_like(y))

    def floor_call():
        res = ode_log_likelihood(case.score_fn, case.sde, case.x, rtol=1e-3, atol=1e-3,
                                 prior_log_prob=case.prior_log_prob, t_start=case.sde.T * (1 - 1e-9))
        return np.asarray(res.log_prob.block_until_ready()), np.asarray(res.nfe)

    looped(y0).block_until_ready()
    solver.fun(t, y0)
    out = {"ours_call_floor_nfe": float(floor_call()[1].max())}
    for name, fn, per in (("rhs_call", lambda: solver.fun(t, y0), 1),
                          ("rhs_compute", lambda: looped(y0).block_until_ready(), loop),
                          ("ours_call_floor", floor_call, 1)):
        walls, cpus = [], []
        for _ in range(reps):
            p0, t0 = time.process_time(), time.perf_counter()
            for _ in range(20 if per == 1 else 1):
                fn()
            k = 20 if per == 1 else loop
            walls.append((time.perf_counter() - t0) / k)
            cpus.append((time.process_time() - p0) / k)
        out[f"{name}_us"] = 1e6 * min(walls)
        out[f"{name}_cpu_us"] = 1e6 * min(cpus)
    return out


def pareto(points: Sequence[dict], key: str = "time_s") -> list[tuple[float, float]]:
    """(worst error, time) Pareto points sorted by increasing error (time strictly decreasing);
    ``key`` picks the time: "time_s" (wall) or "cpu_s" (process CPU time)."""
    pts = sorted((p["max_err"], p[key]) for p in points if math.isfinite(p["max_err"]) and p["max_err"] > 0)
    front: list[tuple[float, float]] = []
    for err, t in pts:
        if not front or t < front[-1][1]:
            front.append((err, t))
    return front


def _loosest(points: Sequence[dict]) -> float:
    """The largest finite worst-case error measured (the loosest tolerance's, normally)."""
    return max((p["max_err"] for p in points if math.isfinite(p["max_err"])), default=float("nan"))


def interp_time(points: Sequence[dict], err: float, key: str = "time_s") -> float:
    """Time to reach worst-case error ``err``: log-log linear interpolation on the Pareto frontier.
    Above the frontier's largest error (a looser tolerance measured no faster than a tighter one, so
    it left the frontier) and up to the largest error measured, the frontier's fastest time: that
    solve already reaches a smaller error. NaN below the smallest error or above the largest."""
    front = pareto(points, key)
    if not front or not front[0][0] <= err <= max(front[-1][0], _loosest(points)):
        return float("nan")
    if err >= front[-1][0]:
        return front[-1][1]
    le = np.log([e for e, _ in front])
    lt = np.log([t for _, t in front])
    return float(np.exp(np.interp(math.log(err), le, lt)))


Frontier = Sequence[dict] | dict[str, Sequence[dict]]


def _members(front: Frontier) -> dict[str, Sequence[dict]]:
    return dict(front) if isinstance(front, dict) else {"": front}


def best_time(front: Frontier, err: float, key: str = "time_s") -> tuple[float, str]:
    """(time, member) of the fastest member of a "best of" frontier (a dict name → points) at
    worst-case error ``err``; a plain list of points is a frontier with one unnamed member.
    (NaN, "") where no member reaches ``err``."""
    best = (float("nan"), "")
    for name, pts in _members(front).items():
        t = interp_time(pts, err, key)
        if math.isfinite(t) and not t >= best[0]:
            best = (t, name)
    return best


def error_range(front: Frontier, key: str = "time_s") -> tuple[float, float] | None:
    """(smallest, largest) worst-case error that any member reaches: the smallest on its Pareto
    frontier, the largest measured (see :func:`interp_time`)."""
    ends = [(f[0][0], max(f[-1][0], _loosest(p))) for p, f in ((p, pareto(p, key)) for p in _members(front).values()) if f]
    return (min(e[0] for e in ends), max(e[1] for e in ends)) if ends else None


def compare_frontiers(ours: Frontier, scipy_pts: Frontier, key: str = "time_s") -> list[dict]:
    """t_scipy / t_ours at the decades of worst-case error that both frontiers reach (the ends of the
    common range too, when it holds fewer than two decades). Either side may be a "best of" frontier
    (dict name → points): its time at each level is that of its fastest member there, whose name is
    reported. With key="time_s" each row also carries the ratio by process CPU time (``cpu_ratio``,
    each side again at its fastest member by CPU time) when the points have "cpu_s"."""
    ro, rs = error_range(ours, key), error_range(scipy_pts, key)
    if ro is None or rs is None:
        return []
    lo, hi = max(ro[0], rs[0]), min(ro[1], rs[1])
    if lo > hi:
        return []
    levels = [10.0**k for k in range(math.ceil(math.log10(lo) - 1e-12), math.floor(math.log10(hi) + 1e-12) + 1)]
    if len(levels) < 2:
        levels = sorted(set(levels) | {lo, hi})
    all_pts = [p for f in (ours, scipy_pts) for pts in _members(f).values() for p in pts]
    with_cpu = key == "time_s" and all("cpu_s" in p for p in all_pts)
    rows = []
    for e in levels:
        (to, so), (ts, ss) = best_time(ours, e, key), best_time(scipy_pts, e, key)
        if not (math.isfinite(to) and math.isfinite(ts)):
            continue
        row = dict(error=e, time_ours_s=to, time_scipy_s=ts, ratio=ts / to, ours_solver=so, scipy_solver=ss)
        if with_cpu:
            (co, _), (cs, _) = best_time(ours, e, "cpu_s"), best_time(scipy_pts, e, "cpu_s")
            row.update(cpu_ours_s=co, cpu_scipy_s=cs, cpu_ratio=cs / co)
        rows.append(row)
    return rows


# --- printing ------------------------------------------------------------------------------------
def _fmt_t(s: float) -> str:
    return f"{s * 1e3:9.2f} ms" if s < 10 else f"{s:9.2f} s "


def print_frontier(label: str, points: Sequence[dict], *, nfe_per_sample: bool) -> None:
    nfe_head = "NFE mean/max" if nfe_per_sample else "NFE (nfev)"
    print(f"  {label}")
    print(f"    {'tol':>8} {'worst err':>10} {'mean err':>10} {'time':>12} {'CPU time':>12} {nfe_head:>13} "
          f"{'µs/NFE':>8} {'reps':>4}")
    for p in points:
        nfe = f"{p['nfe_mean']:.0f}/{p['nfe_max']:.0f}" if nfe_per_sample else f"{p['nfe_max']:.0f}"
        print(f"    {p['tol']:8.1e} {p['max_err']:10.2e} {p['mean_err']:10.2e} {_fmt_t(p['time_s']):>12} "
              f"{_fmt_t(p['cpu_s']):>12} {nfe:>13} {1e6 * p['time_s'] / p['nfe_max']:8.1f} {p['reps']:>4}")


PAIRINGS = (  # (label, ours members, scipy members)
    ("Tsit5 vs RK45", ("Tsit5",), ("RK45",)),
    ("Dopri8 vs RK45", ("Dopri8",), ("RK45",)),
    ("best ours vs RK45", ("Tsit5", "Dopri8"), ("RK45",)),
    ("Tsit5 vs best scipy", ("Tsit5",), ("RK45", "DOP853")),
    ("best ours vs best scipy", ("Tsit5", "Dopri8"), ("RK45", "DOP853")),
)


def print_ratios(rows: Sequence[dict]) -> None:
    if not rows:
        print("    the two frontiers share no range of worst-case error")
        return
    for r in rows:
        cpu = f"   (by CPU time {r['cpu_ratio']:6.2f}×)" if "cpu_ratio" in r else ""
        so = f" [{r['ours_solver']}]" if r.get("ours_solver") else ""
        ss = f" [{r['scipy_solver']}]" if r.get("scipy_solver") else ""
        print(f"    at worst error {r['error']:8.1e}: ours {_fmt_t(r['time_ours_s']).strip():>10}{so:<9}, "
              f"scipy {_fmt_t(r['time_scipy_s']).strip():>10}{ss:<9} →  t_scipy/t_ours = {r['ratio']:6.2f}×{cpu}")


def _summarise(rows: Sequence[dict], target: float) -> dict:
    wall = [r["ratio"] for r in rows if math.isfinite(r["ratio"])]
    cpu = [r["cpu_ratio"] for r in rows if math.isfinite(r.get("cpu_ratio", float("nan")))]
    met = lambda v: (bool(v) and min(v) >= target) if math.isfinite(target) else None  # noqa: E731
    return dict(ratio_min=min(wall) if wall else None, ratio_max=max(wall) if wall else None,
                ratio_median=statistics.median(wall) if wall else None,
                cpu_ratio_min=min(cpu) if cpu else None, cpu_ratio_median=statistics.median(cpu) if cpu else None,
                target_met=met(wall), target_met_cpu=met(cpu), levels=len(wall))


def _fmt_us(us: float) -> str:
    return f"{us:8.1f} µs" if us < 1e4 else f"{us / 1e3:8.2f} ms"


# --- one case --------------------------------------------------------------------------------------
def run_case(case: Case, tols_ours: Sequence[float], tols_scipy: Sequence[float], *,
             tols_dopri8: Sequence[float] | None = None, tols_dop853: Sequence[float] | None = None,
             hutchinson_tol: float | None = None, max_reps: int = 5, budget_s: float = 1.0,
             verbose: bool = True) -> dict:
    t_case = time.perf_counter()
    if verbose:
        print(f"\n=== {case.name} (D = {case.dim}, N = {case.batch}), VP SDE, exact divergence "
              "(probability_flow_field, both sides), float64 ===", flush=True)
    tol_o = dict(Tsit5=tols_ours, Dopri8=tols_ours if tols_dopri8 is None else tols_dopri8)
    tol_s = dict(RK45=tols_scipy, DOP853=tols_scipy if tols_dop853 is None else tols_dop853)
    ours = {name: measure_ours(case, tol_o[name], solver=name, max_reps=max_reps, budget_s=budget_s)
            for name in OURS_SOLVERS}
    flat = ScipyFlatODE(case)
    sp = {m: measure_scipy(case, tol_s[m], method=m, max_reps=max_reps, budget_s=budget_s, solver=flat)
          for m in SCIPY_METHODS}
    pairings = []
    for label, o_names, s_names in PAIRINGS:
        fo = {n: ours[n] for n in o_names} if len(o_names) > 1 else ours[o_names[0]]
        fs = {n: sp[n] for n in s_names} if len(s_names) > 1 else sp[s_names[0]]
        rows = compare_frontiers(fo, fs)
        pairings.append(dict(label=label, ours=list(o_names), scipy=list(s_names), ratios=rows,
                             **_summarise(rows, case.target)))

    # per-evaluation cost, isolated
    costs = eval_costs(case, flat)
    tight_o = min(ours["Tsit5"], key=lambda p: p["tol"])
    tight_s = min(sp["RK45"], key=lambda p: p["tol"])
    costs.update(
        scipy_rk45_per_eval_us=1e6 * tight_s["time_s"] / tight_s["nfe_max"],
        scipy_rk45_per_eval_cpu_us=1e6 * tight_s["cpu_s"] / tight_s["nfe_max"],
        ours_tsit5_per_eval_us=1e6 * tight_o["time_s"] / tight_o["nfe_max"],
        ours_tsit5_per_eval_cpu_us=1e6 * tight_o["cpu_s"] / tight_o["nfe_max"],
        at_tol=dict(ours=tight_o["tol"], scipy=tight_s["tol"]),
    )
    costs["scipy_host_overhead_per_eval_us"] = costs["scipy_rk45_per_eval_us"] - costs["rhs_call_us"]
    costs["scipy_host_overhead_per_eval_cpu_us"] = costs["scipy_rk45_per_eval_cpu_us"] - costs["rhs_call_cpu_us"]

    out = dict(name=case.name, dim=case.dim, batch=case.batch, ours=ours, scipy=sp, pairings=pairings,
               target=case.target, eval_costs=costs,
               compile_first_call_ours_s={n: pts[0]["first_call_s"] for n, pts in ours.items()})
    if verbose:
        for name, pts in ours.items():
            print_frontier(f"ours: ode_log_likelihood (diffrax {name}, shared steps under the worst-sample error norm, one call)", pts,
                           nfe_per_sample=True)
        for m, pts in sp.items():
            print_frontier(f"scipy: solve_ivp {m} on the flattened batch, jitted RHS per evaluation", pts,
                           nfe_per_sample=False)
        print("  time at equal worst-case error (log-log interpolation of the Pareto frontiers; "
              "[solver] = fastest member of a best-of frontier):")
        for pr in pairings:
            print(f"  {pr['label']}:")
            print_ratios(pr["ratios"])
        c = costs
        print(f"  per-evaluation cost of the batched vector field (N = {case.batch}; min over repeats; wall / CPU):")
        print(f"    scipy RHS call (jit dispatch + numpy conversion)      {_fmt_us(c['rhs_call_us'])} / "
              f"{_fmt_us(c['rhs_call_cpu_us'])}")
        print(f"    same field, compiled loop (pure compute)              {_fmt_us(c['rhs_compute_us'])} / "
              f"{_fmt_us(c['rhs_compute_cpu_us'])}")
        print(f"    scipy RK45 total per nfev at tol {c['at_tol']['scipy']:.0e}                {_fmt_us(c['scipy_rk45_per_eval_us'])} / "
              f"{_fmt_us(c['scipy_rk45_per_eval_cpu_us'])}  (host solver overhead ≈ "
              f"{c['scipy_host_overhead_per_eval_us']:.1f} / {c['scipy_host_overhead_per_eval_cpu_us']:.1f} µs)")
        print(f"    ours Tsit5 per evaluation (time / max NFE) at tol {c['at_tol']['ours']:.0e} {_fmt_us(c['ours_tsit5_per_eval_us'])} / "
              f"{_fmt_us(c['ours_tsit5_per_eval_cpu_us'])}  (whole batch, shared steps)")
        print(f"    ours: one whole call over [T(1 − 1e-9), T] (NFE {c['ours_call_floor_nfe']:.0f}), the fixed cost of a call "
              f"{_fmt_us(c['ours_call_floor_us'])} / {_fmt_us(c['ours_call_floor_cpu_us'])}")
    if hutchinson_tol is not None:
        key = jax.random.key(123)
        (h_ours,) = measure_ours(case, [hutchinson_tol], max_reps=max_reps, budget_s=budget_s,
                                 divergence="hutchinson", key=key)
        probes = jax.random.rademacher(jax.random.key(124), (case.batch, case.dim), dtype=case.x.dtype)
        (h_sp,) = measure_scipy(case, [hutchinson_tol], max_reps=max_reps, budget_s=budget_s,
                                solver=ScipyFlatODE(case, divergence="hutchinson", probes=probes))
        out["hutchinson"] = dict(tol=hutchinson_tol, ours=h_ours, scipy=h_sp, ratio_same_tol=h_sp["time_s"] / h_ours["time_s"])
        if verbose:
            print(f"  Hutchinson (1 Rademacher probe per sample, held fixed; Tsit5 vs RK45), same tol = {hutchinson_tol:g} "
                  "(error is Monte-Carlo dominated, so not a matched-accuracy comparison):")
            for lab, p in (("ours ", h_ours), ("scipy", h_sp)):
                print(f"    {lab}: time {_fmt_t(p['time_s']).strip():>10} (CPU {_fmt_t(p['cpu_s']).strip()}), NFE mean/max {p['nfe_mean']:.0f}/{p['nfe_max']:.0f}, "
                      f"worst err {p['max_err']:.2e}, mean err {p['mean_err']:.2e}")
            print(f"    ratio t_scipy/t_ours at the same tolerance = {out['hutchinson']['ratio_same_tol']:.2f}×")
    out["seconds"] = time.perf_counter() - t_case
    if verbose:
        print(f"  (case wall time {out['seconds']:.1f} s, incl. compilation)", flush=True)
    return out


# --- main ------------------------------------------------------------------------------------------
def print_summary(results: Sequence[dict]) -> None:
    print("\n=== summary: t_scipy / t_ours at equal worst-case error (wall; CPU time in brackets) ===")
    print("  target met = the ratio reaches the target at EVERY common decade of worst-case error")
    for r in results:
        print(f"  {r['name']}  (target ≥ {r['target']:g}×)")
        for pr in r["pairings"]:
            if pr["ratio_min"] is None:
                print(f"    {pr['label']:<24} no common error range")
                continue
            wall = "MET" if pr["target_met"] else "NOT met"
            cpu = "—" if pr["target_met_cpu"] is None else ("MET" if pr["target_met_cpu"] else "NOT met")
            print(f"    {pr['label']:<24} {pr['ratio_min']:6.2f}×…{pr['ratio_max']:6.2f}× median {pr['ratio_median']:6.2f}× "
                  f"[CPU min {pr['cpu_ratio_min']:6.2f}×, median {pr['cpu_ratio_median']:6.2f}×] over {pr['levels']} "
                  f"levels: wall {wall:<7} CPU {cpu}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/likelihood.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tolerances and one repetition (smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    parser.add_argument("--large-batch", type=int, default=1000, help="2-D large batch (default 1000)")
    parser.add_argument("--small-batch", type=int, default=8, help="2-D small batch (default 8)")
    parser.add_argument("--hd-batch", type=int, default=8, help="batch of the 100-D case (default 8)")
    parser.add_argument("--hd-dim", type=int, default=100, help="dimension of the high-D case (default 100)")
    parser.add_argument("--no-hd", action="store_true", help="skip the high-dimensional case")
    parser.add_argument("--one-core", action="store_true",
                        help="pin the process to one CPU (both methods single-core; less sensitive to load)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.one_core:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    if args.quick:
        tols = dict(ours=QUICK_TOLS_OURS, dopri8=QUICK_TOLS_DOPRI8, scipy=QUICK_TOLS_SCIPY, dop853=QUICK_TOLS_DOP853)
        reps = dict(max_reps=1, budget_s=0.0)
    else:
        tols = dict(ours=TOLS_OURS, dopri8=TOLS_DOPRI8, scipy=TOLS_SCIPY, dop853=TOLS_DOP853)
        reps = dict(max_reps=25, budget_s=1.5)  # min over up to 25 repeats (sub-ms points jitter by 2x)
    print("In-graph likelihood (numerics.ode_log_likelihood; diffrax Tsit5 and Dopri8) vs ScoreFlow-style scipy "
          "solve_ivp (RK45 and DOP853) on the host")
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, scipy {scipy.__version__}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}), backend {jax.default_backend()}, "
          f"x64 {jax.config.jax_enable_x64}, load avg at start {load0[0]:.2f}")
    print("error = |log p_ODE − log q_t_min| vs the exact mixture density; time = min over repeats after warm-up; "
          "both sides use numerics.likelihood.probability_flow_field.")
    for k, v in tols.items():
        print(f"tolerances (rtol = atol) {k:>6}: {v[0]:.0e}…{v[-1]:.0e} ({len(v)})")

    cases = [
        (demo_case(args.large_batch, seed=args.seed, target=3.0), None),
        (demo_case(args.small_batch, seed=args.seed, target=20.0), None),
    ]
    if not args.no_hd:
        cases.append((highdim_case(args.hd_batch, dim=args.hd_dim, seed=args.seed,
                                   target=20.0 if args.hd_batch <= 16 else 3.0), 1e-5))
    results = [run_case(c, tols["ours"], tols["scipy"], tols_dopri8=tols["dopri8"], tols_dop853=tols["dop853"],
                        hutchinson_tol=h, **reps) for c, h in cases]

    total = time.perf_counter() - t_start
    print_summary(results)
    load1 = os.getloadavg()
    print(f"total wall time {total:.1f} s; load avg at start {load0[0]:.2f}, at end {load1[0]:.2f} "
          f"(5-min {load1[1]:.2f}) on {os.cpu_count()} CPUs")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(
            quick=args.quick, one_core=args.one_core, seed=args.seed, total_seconds=total, load_avg_start=load0,
            load_avg_end=load1,
            versions=dict(jax=jax.__version__, diffrax=diffrax.__version__, scipy=scipy.__version__,
                          numpy=np.__version__, python=platform.python_version()),
            cpus=os.cpu_count(), tols=tols, cases=results,
        )
        args.json.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
