"""In-graph likelihood vs host-driven ``scipy.integrate.solve_ivp`` at MATCHED worst-case accuracy.

    .venv/bin/python benchmarks/likelihood.py [--quick] [--json PATH]

Compares :func:`numerics.likelihood.ode_log_likelihood` (diffrax Tsit5, every sample its own adaptive
steps, vmapped, one compiled call) with the approach of the public ScoreFlow code: the whole batch
is ONE flattened system y = concat(x of all samples, per-sample log-det accumulators), integrated by
``scipy.integrate.solve_ivp(method="RK45")`` on the host; its right-hand side is one ``jax.jit``
function of (t, y) that returns (dx, divergence term) for the whole batch and is converted to numpy
at every evaluation.

Both use the same exact mixture score (``mixture.score_fn(sde)``), the same exact prior
(log q_T = ``mixture.diffuse(sde, sde.T).log_prob``), the same exact divergence (D Jacobian-vector
products of one linearisation), float64 and the VP SDE. The error of a sample is
|log p_ODE(x) − log q_{t_min}(x)| against the exact mixture density (an independent truth); the
figure of merit is the WORST per-sample error, because one step size over a flattened batch only
controls an average (RMS) error.

For each case the script sweeps tolerances (rtol = atol) for both methods, prints the error–time
frontier (worst and mean error, time, NFE), and compares times at EQUAL worst-case error: each
frontier is reduced to its Pareto points and interpolated piecewise-linearly in log-log (log time
as a function of log worst error); the ratio t_scipy / t_ours is reported at the decades of error
that both frontiers reach.

Timing: every compiled function is warmed up first (ours: one call per tolerance, because the
tolerance is a compile-time constant of ``ode_log_likelihood``; scipy: the right-hand side is
compiled once, for all tolerances, and a full warm-up solve is run). Then each configuration is
timed with ``time.perf_counter`` around the complete call including ``block_until_ready`` /
conversion to numpy, repeated while cheap (at most 5 times or about 1 s), and the MINIMUM is
reported (the machine may be shared; the median is kept in the JSON). Backend compilations during
the timed calls are counted with ``jax.monitoring`` and must be zero.
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

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import numerics  # noqa: E402  (enables float64)
from numerics.__main__ import demo_mixture  # noqa: E402
from numerics.likelihood import ode_log_likelihood  # noqa: E402

__all__ = [
    "Case",
    "ScipyFlatODE",
    "compare_frontiers",
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

TOLS_OURS = [10.0 ** (-e / 2) for e in range(6, 19)]  # 1e-3 … 1e-9, half decades
TOLS_SCIPY = [10.0 ** (-e / 2) for e in range(6, 23)]  # 1e-3 … 1e-11, half decades
QUICK_TOLS_OURS = [1e-3, 1e-5, 1e-7]
QUICK_TOLS_SCIPY = [1e-3, 1e-5, 1e-7, 1e-9]

# --- compile counting ----------------------------------------------------------------------------
_COMPILES = [0]


def _on_event(name: str, *args, **kwargs) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
        _COMPILES[0] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def compile_count() -> int:
    """Number of XLA backend compilations so far in this process."""
    return _COMPILES[0]


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
def ours_log_prob(case: Case, tol: float, *, divergence: str = "exact", key=None):
    """The in-graph likelihood. Returns (log p as numpy (N,), nfe as numpy (N,))."""
    kw = {} if divergence == "exact" else dict(divergence="hutchinson", n_probes=1, key=key)
    res = ode_log_likelihood(case.score_fn, case.sde, case.x, rtol=tol, atol=tol,
                             prior_log_prob=case.prior_log_prob, **kw)
    return np.asarray(res.log_prob.block_until_ready()), np.asarray(res.nfe)


class ScipyFlatODE:
    """ScoreFlow-style likelihood: one flattened system, ``solve_ivp(RK45)`` on the host, one jitted
    device call (dx and divergence of the whole batch) per function evaluation.

    The jitted right-hand side is compiled once (:meth:`warmup`); t is always passed as
    ``np.float64`` and y as a float64 array of fixed shape, so it never recompiles across tolerances.
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

        def one(x, t, v):
            s, lin = jax.linearize(lambda z: score_fn(z, t), x)
            if exact:
                div_s = jnp.trace(jax.vmap(lin)(jnp.eye(d, dtype=x.dtype)))
            else:
                div_s = jnp.sum(v * lin(v))
            f, g2 = sde.drift_coeff(t), sde.diffusion_sq(t)
            return f * x - 0.5 * g2 * s, d * f - 0.5 * g2 * div_s

        @jax.jit
        def vector_field(t, y):
            x = y[: n * d].reshape(n, d)
            dx, ddelta = jax.vmap(one, (0, None, 0))(x, t, probes)
            return jnp.concatenate([dx.reshape(-1), ddelta])

        self._vf = vector_field
        self._prior = jax.jit(jax.vmap(case.prior_log_prob))
        self.nfev_last = 0

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

    def solve(self, tol: float):
        """Returns (log p as numpy (N,), nfev of the flattened solve)."""
        sde = self.case.sde
        sol = solve_ivp(self.fun, (sde.t_min, sde.T), self.initial_state(), method="RK45", rtol=tol, atol=tol)
        if sol.status != 0:
            raise RuntimeError(f"solve_ivp failed at tol={tol:g}: {sol.message}")
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


def measure_ours(case: Case, tols: Sequence[float], *, max_reps: int = 5, budget_s: float = 1.0,
                 divergence: str = "exact", key=None) -> list[dict]:
    """Frontier of the in-graph likelihood: warm-up (compile) call, then timed calls, per tolerance."""
    points = []
    for tol in tols:
        t0 = time.perf_counter()
        ours_log_prob(case, tol, divergence=divergence, key=key)  # warm-up: compiles for this tolerance
        first = time.perf_counter() - t0
        (log_p, nfe), times, cpus, compiles = _timed(
            lambda: ours_log_prob(case, tol, divergence=divergence, key=key), max_reps=max_reps, budget_s=budget_s)
        points.append(_point(tol, log_p, case.exact, times, cpus, compiles, nfe.mean(), nfe.max(), first))
    return points


def measure_scipy(case: Case, tols: Sequence[float], *, max_reps: int = 5, budget_s: float = 1.0,
                  solver: ScipyFlatODE | None = None) -> list[dict]:
    """Frontier of the host-driven flattened RK45 solve (right-hand side compiled once for all tols)."""
    solver = ScipyFlatODE(case) if solver is None else solver
    t0 = time.perf_counter()
    solver.warmup()
    solver.solve(max(tols))  # full warm-up solve
    first = time.perf_counter() - t0
    points = []
    for tol in tols:
        (log_p, nfev), times, cpus, compiles = _timed(lambda: solver.solve(tol), max_reps=max_reps, budget_s=budget_s)
        points.append(_point(tol, log_p, case.exact, times, cpus, compiles, nfev, nfev, first))
        first = None
    if solver.cache_size() != 1:
        raise RuntimeError(f"scipy right-hand side compiled {solver.cache_size()} times; expected once.")
    return points


def pareto(points: Sequence[dict], key: str = "time_s") -> list[tuple[float, float]]:
    """(worst error, time) Pareto points sorted by increasing error (time strictly decreasing);
    ``key`` picks the time: "time_s" (wall) or "cpu_s" (process CPU time)."""
    pts = sorted((p["max_err"], p[key]) for p in points if math.isfinite(p["max_err"]) and p["max_err"] > 0)
    front: list[tuple[float, float]] = []
    for err, t in pts:
        if not front or t < front[-1][1]:
            front.append((err, t))
    return front


def interp_time(points: Sequence[dict], err: float, key: str = "time_s") -> float:
    """Time to reach worst-case error ``err``: log-log linear interpolation on the Pareto frontier
    (NaN outside the frontier's error range)."""
    front = pareto(points, key)
    if not front or not (front[0][0] <= err <= front[-1][0]):
        return float("nan")
    le = np.log([e for e, _ in front])
    lt = np.log([t for _, t in front])
    return float(np.exp(np.interp(math.log(err), le, lt)))


def compare_frontiers(ours: Sequence[dict], scipy_pts: Sequence[dict], key: str = "time_s") -> list[dict]:
    """t_scipy / t_ours at the decades of worst-case error that both frontiers reach (the ends of the
    common range too, when it holds fewer than two decades). With key="time_s" each row also carries
    the same ratio by process CPU time (``cpu_ratio``) when the points have "cpu_s"."""
    fo, fs = pareto(ours, key), pareto(scipy_pts, key)
    if not fo or not fs:
        return []
    lo, hi = max(fo[0][0], fs[0][0]), min(fo[-1][0], fs[-1][0])
    if lo > hi:
        return []
    levels = [10.0**k for k in range(math.ceil(math.log10(lo) - 1e-12), math.floor(math.log10(hi) + 1e-12) + 1)]
    if len(levels) < 2:
        levels = sorted(set(levels) | {lo, hi})
    rows = []
    for e in levels:
        to, ts = interp_time(ours, e, key), interp_time(scipy_pts, e, key)
        row = dict(error=e, time_ours_s=to, time_scipy_s=ts, ratio=ts / to)
        if key == "time_s" and all("cpu_s" in p for p in (*ours, *scipy_pts)):
            co, cs = interp_time(ours, e, "cpu_s"), interp_time(scipy_pts, e, "cpu_s")
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


def print_ratios(rows: Sequence[dict]) -> None:
    if not rows:
        print("  ratio: the two frontiers share no range of worst-case error")
        return
    for r in rows:
        cpu = f"   (by CPU time {r['cpu_ratio']:6.2f}×)" if "cpu_ratio" in r else ""
        print(f"  at worst error {r['error']:8.1e}: ours {_fmt_t(r['time_ours_s']).strip():>10}, "
              f"scipy {_fmt_t(r['time_scipy_s']).strip():>10}  →  ratio t_scipy/t_ours = {r['ratio']:6.2f}×{cpu}")


# --- one case --------------------------------------------------------------------------------------
def run_case(case: Case, tols_ours: Sequence[float], tols_scipy: Sequence[float], *, hutchinson_tol: float | None = None,
             max_reps: int = 5, budget_s: float = 1.0, verbose: bool = True) -> dict:
    t_case = time.perf_counter()
    if verbose:
        print(f"\n=== {case.name} (D = {case.dim}, N = {case.batch}), VP SDE, exact trace, float64 ===", flush=True)
    ours = measure_ours(case, tols_ours, max_reps=max_reps, budget_s=budget_s)
    sp = measure_scipy(case, tols_scipy, max_reps=max_reps, budget_s=budget_s)
    ratios = compare_frontiers(ours, sp)
    finite = [r["ratio"] for r in ratios if math.isfinite(r["ratio"])]
    cpu_finite = [r["cpu_ratio"] for r in ratios if math.isfinite(r.get("cpu_ratio", float("nan")))]
    out = dict(name=case.name, dim=case.dim, batch=case.batch, ours=ours, scipy=sp, ratios=ratios,
               ratio_min=min(finite) if finite else None, ratio_max=max(finite) if finite else None,
               ratio_median=statistics.median(finite) if finite else None,
               cpu_ratio_median=statistics.median(cpu_finite) if cpu_finite else None, target=case.target,
               target_met=bool(finite) and min(finite) >= case.target if math.isfinite(case.target) else None,
               compile_first_call_ours_s=[p["first_call_s"] for p in ours])
    if verbose:
        print_frontier("ours: ode_log_likelihood (diffrax Tsit5, per-sample steps, vmapped, one call)", ours,
                       nfe_per_sample=True)
        print_frontier("scipy: solve_ivp RK45 on the flattened batch, jitted RHS per evaluation", sp,
                       nfe_per_sample=False)
        print("  time at equal worst-case error (log-log interpolation of the Pareto frontiers):")
        print_ratios(ratios)
    if hutchinson_tol is not None:
        key = jax.random.key(123)
        (h_ours,) = measure_ours(case, [hutchinson_tol], max_reps=max_reps, budget_s=budget_s,
                                 divergence="hutchinson", key=key)
        probes = jax.random.rademacher(jax.random.key(124), (case.batch, case.dim), dtype=case.x.dtype)
        (h_sp,) = measure_scipy(case, [hutchinson_tol], max_reps=max_reps, budget_s=budget_s,
                                solver=ScipyFlatODE(case, divergence="hutchinson", probes=probes))
        out["hutchinson"] = dict(tol=hutchinson_tol, ours=h_ours, scipy=h_sp, ratio_same_tol=h_sp["time_s"] / h_ours["time_s"])
        if verbose:
            print(f"  Hutchinson (1 Rademacher probe per sample, held fixed), same tol = {hutchinson_tol:g} "
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
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/likelihood.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer tolerances and one repetition (smoke run)")
    parser.add_argument("--json", type=Path, default=None, help="write all figures to this JSON file")
    parser.add_argument("--large-batch", type=int, default=1000, help="2-D large batch (default 1000)")
    parser.add_argument("--small-batch", type=int, default=8, help="2-D small batch (default 8)")
    parser.add_argument("--hd-batch", type=int, default=8, help="batch of the 100-D case (default 8)")
    parser.add_argument("--hd-dim", type=int, default=100, help="dimension of the high-D case (default 100)")
    parser.add_argument("--no-hd", action="store_true", help="skip the high-dimensional case")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    tols_o, tols_s = (QUICK_TOLS_OURS, QUICK_TOLS_SCIPY) if args.quick else (TOLS_OURS, TOLS_SCIPY)
    reps = dict(max_reps=1, budget_s=0.0) if args.quick else dict(max_reps=7, budget_s=1.5)
    print("In-graph likelihood (numerics.ode_log_likelihood) vs ScoreFlow-style scipy solve_ivp(RK45) on the host")
    print(f"jax {jax.__version__}, scipy {scipy.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
          f"backend {jax.default_backend()}, x64 {jax.config.jax_enable_x64}, load avg at start {load0[0]:.2f}")
    print("error = |log p_ODE − log q_t_min| vs the exact mixture density; time = min over repeats after warm-up.")
    print(f"tolerances (rtol = atol): ours {tols_o[0]:.0e}…{tols_o[-1]:.0e} ({len(tols_o)}), "
          f"scipy {tols_s[0]:.0e}…{tols_s[-1]:.0e} ({len(tols_s)})")

    cases = [
        (demo_case(args.large_batch, seed=args.seed, target=3.0), None),
        (demo_case(args.small_batch, seed=args.seed, target=20.0), None),
    ]
    if not args.no_hd:
        cases.append((highdim_case(args.hd_batch, dim=args.hd_dim, seed=args.seed,
                                   target=20.0 if args.hd_batch <= 16 else 3.0), 1e-5))
    results = [run_case(c, tols_o, tols_s, hutchinson_tol=h, **reps) for c, h in cases]

    total = time.perf_counter() - t_start
    print("\n=== summary: t_scipy / t_ours at equal worst-case error ===")
    for r in results:
        if r["ratio_min"] is None:
            status = "no common error range"
        else:
            status = "MET" if r["target_met"] else "NOT met"
        rng = "—" if r["ratio_min"] is None else (
            f"{r['ratio_min']:.2f}×…{r['ratio_max']:.2f}× (median {r['ratio_median']:.2f}×; "
            f"by CPU time median {r['cpu_ratio_median']:.2f}×)")
        print(f"  {r['name']:<26} {rng:<58} target ≥ {r['target']:g}× at every level: {status}")
    print(f"total wall time {total:.1f} s; load avg at end {os.getloadavg()[0]:.2f}")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(
            quick=args.quick, seed=args.seed, total_seconds=total, load_avg_start=load0, load_avg_end=os.getloadavg(),
            versions=dict(jax=jax.__version__, scipy=scipy.__version__, numpy=np.__version__,
                          python=platform.python_version()),
            cpus=os.cpu_count(), tols_ours=tols_o, tols_scipy=tols_s, cases=results,
        )
        args.json.write_text(json.dumps(payload, indent=2, default=float) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
