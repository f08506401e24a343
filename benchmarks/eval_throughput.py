"""Bits/dim evaluation throughput of DDPM++: in-graph ODE likelihood vs the ScoreFlow-style scipy host loop.

    .venv/bin/python benchmarks/eval_throughput.py [--quick | --full] [--batch N] [--tol T] [--repeats R]
        [--budget S] [--dtype float64|float32|both] [--conv-layout nchw|nhwc|both] [--cases digits,cifar]
        [--reference-tol T] [--json PATH]

Both sides compute the probability-flow ODE NLL of the SAME float32 DDPM++ noise predictor, turned
into a score by ``training.evaluate.EpsModel`` (s = −ε̂/σ_t), with the VP SDE (t_min = 1e-5), the
N(0, I) prior, the Hutchinson divergence with ONE Rademacher probe per image held fixed along the
trajectory, rtol = atol = ``--tol`` (default 1e-5), and report bits/dim of uniformly dequantised
8-bit images (data centred to [−1, 1], ``numerics.likelihood.bits_per_dim`` with data_scale = 2).

* **in-graph** — ``training.evaluate.ode_nll(EpsModel(net, sde), sde, x, key=..., divergence=
  "hutchinson", n_probes=1, rtol, atol, dtype)``: ``numerics.likelihood.ode_log_likelihood``, diffrax
  Tsit5 + PID, the whole batch in ONE compiled call (shared adaptive steps under the worst per-sample
  error norm, the default ``steps="shared"``), one host synchronisation at the end.
* **scipy host loop** — the public ScoreFlow code's evaluation: the batch flattened into one system
  y = [x.ravel(), Δlog p] (float64 on the host, as scipy keeps it), ``scipy.integrate.solve_ivp(fun,
  (t_min, T), y0, method="RK45", rtol, atol)``, and per function evaluation ONE jitted device call
  that returns the drift and the Hutchinson divergence of the whole batch (the same field
  as the in-graph side: ``numerics.likelihood.probability_flow_field``) plus the device↔numpy conversions.
  ``benchmarks/likelihood.py``'s ``ScipyFlatODE`` is written for the exact mixture score on (N, D)
  data in float64 only, so the loop for an image network in either dtype is written here.

The probes are the SAME on both sides: ``ode_nll`` draws ``rademacher(fold_in(key, 0), (N, 1,
*event))`` in the solve dtype for its single batch, and the host loop draws exactly that (tested).
The two bits/dim therefore estimate the same quantity and differ only by solver error (Tsit5 with the
worst-sample RMS norm vs RK45 with the RMS norm of the flattened batch) and float32 rounding inside
the network; the table prints the difference and a generous tolerance-implied bound
(:func:`tol_implied_bpd`). ``--reference-tol 1e-8`` adds an untimed in-graph solve at that tolerance
(same probes) and prints each side's error against it.

Precision (``--dtype``): ``float64`` (default, the project's evaluation setting) solves in float64 on
both sides and the float32 network is evaluated inside it (input cast to float32, output back);
``float32`` solves in float32 in graph (``ode_nll(dtype=float32)``) and casts the state to float32
before each device call on the host side (as ScoreFlow does; scipy itself keeps float64). On the CPU
float32 was no faster (the network is float32 either way; the ODE state is small).

Convolution layout (``--conv-layout``): ``nhwc`` is the network as built — DDPM++ computes every
convolution channels-last (training.networks.ddpmpp.ChannelsLastConv2d, explicit transposes).
``nchw`` evaluates the SAME parameters with plain channels-first ``eqx.nn.Conv2d`` layers, as the
network was first built: on XLA:CPU a channels-first convolution inside a ``while_loop`` body —
every adaptive diffrax solve is one — runs far slower than the same convolution outside a loop (17×
for a 16-channel 3×3 convolution on 4×16×32×32 measured here; a known XLA:CPU problem,
jax-ml/jax#12868), which only the in-graph side suffers. Default ``both`` on CPU; ``nhwc`` with
``--full`` and ``--quick``.

The network: ``training.train.build_model`` for a ``ModelConfig(name="ddpmpp", ...)``. A fresh
DDPM++ has ε̂ ≡ 0 (the last convolution of every residual block, the attention output and the
output convolution start at zero), which makes the ODE trivial. Before timing
(:func:`perturb_zero_init`) the all-zero weight of every such layer is redrawn from N(0, 1/fan_in)
(biases stay zero) except the time-embedding projections, which stay zero, and the output
convolution is rescaled so that ε̂ has unit RMS on the batch at t = 0.5 (a trained noise predictor's
magnitude). The field is a generic non-linear one and its NFE is NOT a trained model's: most steps
fall at t > 0.5, where this random ε̂ times ½β(t) ≤ 10 makes the ODE mildly stiff, while a trained
ε̂ ≈ x_t makes the field nearly vanish there. The per-evaluation cost (ms/eval) transfers to trained
networks of the same size; the NFE does not.

Cases (CPU defaults, reduced width): ``digits`` — the embedded 8×8 digits (1×8×8), DDPM++ nf = 16,
ch_mult (1, 2), 1 block, attention at 4×4 (the digits preset at half width), batch 8; ``cifar`` —
CIFAR-shaped smooth random 8-bit images (3×32×32: low-frequency colour fields + pixel noise; nothing
is downloaded), DDPM++ nf = 16, ch_mult (1, 2), 1 block, attention at 16×16, batch 2. ``--full``: the
CIFAR-10 DDPM++ of Song et al. (nf = 128, ch_mult (1, 2, 2, 2), 4 blocks, attention at 16×16; 61.8M
parameters) on the CIFAR-shaped case, batch 64, no time budget: meant for a GPU. ``--quick``: a tiny
network (nf = 8, one resolution, no attention) on the digits, batch 4, tol 1e-3, nhwc, one repeat
(the smoke test).

Timing: the in-graph side is compiled by a warm-up ``ode_log_likelihood`` call with exactly the
arguments ``ode_nll`` passes (same compiled program; it also gives the NFE, which ``ode_nll`` does
not return, and reference values that the timed ``ode_nll`` calls must reproduce exactly); the host
loop's right-hand side is compiled by one warm-up evaluation. Then up to ``--repeats`` (default 3)
complete evaluations per side are timed with ``time.perf_counter`` and ``time.process_time`` (CPU
time of this process, all threads), including the conversion of the result to numpy; no further
repeat starts once the timed calls of a side would pass ``--budget`` seconds (default 15). The first
timed call is "the second call" (the first after compilation); images/s is the batch over the
MEDIAN wall time, ms/eval the median wall time over the NFE. Backend compilations during timed
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
import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

import numerics  # noqa: E402  (enables float64)
from benchmarks._compiles import compile_count  # noqa: E402
from numerics.likelihood import bits_per_dim, ode_log_likelihood, probability_flow_field  # noqa: E402
from training.configs import ModelConfig  # noqa: E402
from training.data import dequantize, load_digits  # noqa: E402
from training.networks.ddpmpp import ChannelsLastConv2d  # noqa: E402
from training.evaluate import EpsModel, ode_nll, to_bits_per_dim  # noqa: E402
from training.networks import count_params  # noqa: E402
from training.train import build_model  # noqa: E402

__all__ = [
    "CaseSpec",
    "ScipyHostLoop",
    "batched_eps",
    "build_case",
    "cifar_like_images",
    "default_specs",
    "hutchinson_probes",
    "main",
    "perturb_zero_init",
    "to_channels_first_convs",
    "tol_implied_bpd",
    "reference_nll",
    "run_case",
    "time_ingraph",
    "time_scipy",
]

DTYPES = {"float64": jnp.float64, "float32": jnp.float32}

# --- cases ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CaseSpec:
    """One benchmark case: data set, network width and batch."""

    name: str
    data: str  # "digits" | "cifar"
    batch: int
    nf: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    attn_resolutions: tuple[int, ...]

    def model_config(self) -> ModelConfig:
        return ModelConfig(name="ddpmpp", nf=self.nf, ch_mult=tuple(self.ch_mult), num_res_blocks=self.num_res_blocks,
                           attn_resolutions=tuple(self.attn_resolutions), dropout=0.1, embedding="positional")

    def describe(self) -> str:
        return (f"DDPM++ nf={self.nf} ch_mult={tuple(self.ch_mult)} blocks={self.num_res_blocks} "
                f"attn={tuple(self.attn_resolutions)}")


def default_specs(*, quick: bool = False, full: bool = False, batch: int | None = None) -> dict[str, CaseSpec]:
    """The cases of a run: CPU-sized (default), tiny (``quick``) or the full CIFAR-10 network (``full``)."""
    if quick:
        specs = {
            "digits": CaseSpec("digits 1x8x8", "digits", 4, 8, (1,), 1, ()),
            "cifar": CaseSpec("cifar-shaped 3x32x32", "cifar", 4, 8, (1, 2), 1, ()),
        }
    elif full:
        specs = {
            "cifar": CaseSpec("cifar-shaped 3x32x32 (full width)", "cifar", 64, 128, (1, 2, 2, 2), 4, (16,)),
            "digits": CaseSpec("digits 1x8x8 (digits preset)", "digits", 256, 32, (1, 2), 1, (4,)),
        }
    else:
        specs = {
            "digits": CaseSpec("digits 1x8x8 (reduced)", "digits", 8, 16, (1, 2), 1, (4,)),
            "cifar": CaseSpec("cifar-shaped 3x32x32 (reduced)", "cifar", 2, 16, (1, 2), 1, (16,)),
        }
    if batch is not None:
        specs = {k: CaseSpec(s.name, s.data, int(batch), s.nf, s.ch_mult, s.num_res_blocks, s.attn_resolutions)
                 for k, s in specs.items()}
    return specs


def cifar_like_images(n: int, *, seed: int = 0) -> np.ndarray:
    """(n, 3, 32, 32) uint8 "random-ish" images: smooth colour fields (4×4 random values per channel,
    bilinearly upsampled) plus pixel noise of standard deviation 12 levels, clipped to 0..255. Not
    CIFAR-10 (nothing is downloaded); only its shape and a plausible pixel statistic."""
    rng = np.random.default_rng(seed)
    coarse = rng.normal(128.0, 50.0, size=(n, 3, 4, 4))
    grid = (np.arange(32) + 0.5) / 8.0 - 0.5  # coarse-pixel coordinates of the 32 fine pixels
    i0 = np.clip(np.floor(grid).astype(int), 0, 3)
    i1 = np.clip(i0 + 1, 0, 3)
    w = np.clip(grid - np.floor(grid), 0.0, 1.0)
    rows = coarse[:, :, i0, :] * (1 - w)[None, None, :, None] + coarse[:, :, i1, :] * w[None, None, :, None]
    img = rows[:, :, :, i0] * (1 - w) + rows[:, :, :, i1] * w
    img = img + rng.normal(0.0, 12.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def perturb_zero_init(net: eqx.Module, seed: int, x: jax.Array) -> tuple[eqx.Module, int]:
    """Make a fresh DDPM++ non-trivial: redraw the weight of every convolution / linear layer whose
    weight is all zero (score_sde's ``init_scale=0`` layers: each residual block's second convolution,
    the attention output projection, ``conv_out``) from N(0, 1/fan_in), biases unchanged; EXCEPT the
    residual blocks' time-embedding projections ``temb_proj``, which stay zero; then rescale
    ``conv_out`` so that ε̂ has unit RMS on ``x`` at t = 0.5. Returns (network, redrawn weights).

    Why temb_proj stays zero: the positional time embedding has frequencies up to 999 rad per unit
    t, and random projections of it make ε̂ oscillate in t, which a trained network does not do; with
    them redrawn, a DDPM++ (nf = 16, digits, batch 4) needed 2785 evaluations at rtol = atol = 1e-5
    instead of 409.
    So ε̂ depends on x only and the field's t-dependence is that of s = −ε̂/σ_t and the SDE.
    """
    layer_types = (eqx.nn.Conv2d, eqx.nn.Linear)
    is_layer = lambda m: isinstance(m, layer_types)  # noqa: E731
    rng = np.random.default_rng(seed)  # numpy draws: no per-shape compilation of eager jax.random calls
    redrawn = [0]

    def redraw(path, m):
        if not is_layer(m):
            return m
        if np.any(np.asarray(m.weight)) or "temb_proj" in jax.tree_util.keystr(path):
            return m
        fan_in = int(np.prod(m.weight.shape[1:]))
        w = jnp.asarray(rng.standard_normal(m.weight.shape) / math.sqrt(fan_in), m.weight.dtype)
        redrawn[0] += 1
        return eqx.tree_at(lambda layer: layer.weight, m, w)

    net = jax.tree_util.tree_map_with_path(redraw, net, is_leaf=is_layer)
    eps = batched_eps(net, jnp.asarray(x, jnp.float32), jnp.asarray(0.5, jnp.float32))
    rms = float(jnp.sqrt(jnp.mean(jnp.square(eps))))
    net = eqx.tree_at(lambda m: (m.conv_out.weight, m.conv_out.bias), net,
                      (net.conv_out.weight / rms, net.conv_out.bias / rms))
    return net, redrawn[0]


@eqx.filter_jit
def batched_eps(net, x: jax.Array, t) -> jax.Array:
    """ε̂(x_i, t) for a batch (one compiled call; an eager DDPM++ forward dispatches op by op)."""
    return jax.vmap(lambda xi: net(xi, t))(x)


def to_channels_first_convs(net: eqx.Module) -> tuple[eqx.Module, int]:
    """Replace every channels-last convolution of DDPM++
    (:class:`training.networks.ddpmpp.ChannelsLastConv2d`) by a plain channels-first
    ``eqx.nn.Conv2d`` with the same parameters — the network as it was built before the layout
    change, to measure what that change bought. Returns (network, number replaced)."""
    is_conv = lambda m: isinstance(m, ChannelsLastConv2d)  # noqa: E731
    count = [0]

    def swap(m):
        if not is_conv(m):
            return m
        count[0] += 1
        # the layer's structure only (no random initialisation: an eager draw per shape compiled ~0.5 s
        # per layer); every array leaf is replaced below
        plain = eqx.filter_eval_shape(eqx.nn.Conv2d, m.in_channels, m.out_channels, m.kernel_size, padding=m.padding,
                                      use_bias=m.use_bias, dtype=m.weight.dtype, key=jax.random.PRNGKey(0))
        return eqx.tree_at(lambda c: (c.weight, c.bias), plain, (m.weight, m.bias)) if m.use_bias else \
            eqx.tree_at(lambda c: c.weight, plain, m.weight)

    return jax.tree.map(swap, net, is_leaf=is_conv), count[0]


@dataclass
class Case:
    """A built case: the model (float32 network as a score), the SDE and the dequantised batch."""

    spec: CaseSpec
    model: EpsModel
    sde: numerics.SDE
    x: jax.Array  # (N, C, H, W) float64, centred dequantised images
    n_params: int
    n_redrawn: int

    @property
    def dims(self) -> int:
        return int(np.prod(self.x.shape[1:]))

    def model_for(self, layout: str) -> EpsModel:
        """The score model with the network as built (``"nhwc"``: DDPM++ computes its convolutions
        channels-last) or with every convolution computed channels-first (``"nchw"``, plain
        ``eqx.nn.Conv2d``, :func:`to_channels_first_convs`; same parameters, same function up to
        float32 rounding)."""
        if layout == "nhwc":
            return self.model
        if layout == "nchw":
            return EpsModel(to_channels_first_convs(self.model.net)[0], self.sde)
        raise ValueError(f"layout must be 'nchw' or 'nhwc'; got {layout!r}.")


def build_case(spec: CaseSpec, *, seed: int = 0) -> Case:
    """Data, network (built like ``training.train.build_model``, then :func:`perturb_zero_init`) and VP SDE."""
    sde = numerics.VPSDE(t_min=1e-5)
    if spec.data == "digits":
        images = load_digits().images
        if spec.batch > images.shape[0]:
            raise ValueError(f"the digits set has {images.shape[0]} images; batch {spec.batch} is too large.")
        images = images[: spec.batch]
    elif spec.data == "cifar":
        images = cifar_like_images(spec.batch, seed=seed)
    else:
        raise ValueError(f"unknown data {spec.data!r}; choose digits or cifar.")
    k_net, k_deq = jax.random.split(jax.random.key(seed))
    x = dequantize(jnp.asarray(images), k_deq, centered=True).astype(jnp.float64)
    event = tuple(int(s) for s in images.shape[1:])
    # one compiled initialisation instead of dozens of eagerly dispatched (and compiled) random draws,
    # compiled without XLA's backend optimisations: it runs once, and they took 12 of its 13 s of
    # compilation (the weights differ from an optimised build's in the last bit only)
    static = {}  # the non-array part, kept from the one trace of build_model

    def init(k):
        params, static["net"] = eqx.partition(build_model(spec.model_config(), event, k), eqx.is_array)
        return params

    params = jax.jit(init).lower(k_net).compile(compiler_options={"xla_backend_optimization_level": 0})(k_net)
    net = eqx.combine(params, static["net"])
    net, redrawn = perturb_zero_init(net, seed + 1, x)
    return Case(spec, EpsModel(net, sde), sde, x, count_params(net), redrawn)


# --- the two methods -------------------------------------------------------------------------------
def hutchinson_probes(key, x: jax.Array, dtype) -> jax.Array:
    """The probes ``ode_nll`` uses for a single batch: ``ode_log_likelihood`` with key fold_in(key, 0)
    draws rademacher(·, (N, n_probes = 1, *event)) in the solve dtype."""
    return jax.random.rademacher(jax.random.fold_in(key, 0), (x.shape[0], 1, *x.shape[1:]), dtype=dtype)


class ScipyHostLoop:
    """ScoreFlow-style evaluation: one flattened system y = [x.ravel(), Δlog p] integrated by scipy's
    ``solve_ivp`` on the host; per function evaluation ONE jitted device call computes, for the whole
    batch, the probability-flow drift and the Hutchinson divergence term with fixed probes (the
    in-graph side's field, ``numerics.likelihood.probability_flow_field``).

    The network's parameters are arguments of the jitted function (not constants folded into the
    program), as in the in-graph solve. ``dtype``: the precision of the device computation (scipy's
    own state is float64 either way).
    """

    def __init__(self, model: EpsModel, sde: numerics.SDE, x: jax.Array, probes: jax.Array, *, dtype=jnp.float64):
        self.sde, self.dtype = sde, jnp.dtype(dtype)
        self.shape = tuple(int(s) for s in x.shape)
        self.n = self.shape[0]
        self.d = int(np.prod(self.shape[1:]))
        self.x0 = np.asarray(x, np.float64)
        params, static = eqx.partition(model, eqx.is_array)
        self.params = jax.device_put(params)
        self.probes = jax.device_put(jnp.asarray(probes, self.dtype))
        n, d, shape = self.n, self.d, self.shape

        def rhs(params, probes, t, y):
            score = eqx.combine(params, static)
            xt = y[: n * d].reshape(shape)
            dx, ddiv = probability_flow_field(score, sde, probes)(t, xt)
            return jnp.concatenate([dx.reshape(-1), ddiv[:, 0]])

        self._rhs = jax.jit(rhs)
        self._prior = jax.jit(jax.vmap(sde.prior_log_prob))

    def fun(self, t, y) -> np.ndarray:
        """The right-hand side handed to scipy: numpy float64 in, numpy out (one device call)."""
        out = self._rhs(self.params, self.probes, np.asarray(t, self.dtype), np.asarray(y, self.dtype))
        return np.asarray(out)

    def initial_state(self) -> np.ndarray:
        return np.concatenate([self.x0.reshape(-1), np.zeros(self.n)])

    def warmup(self) -> None:
        self.fun(self.sde.t_min, self.initial_state())
        np.asarray(self._prior(np.zeros(self.shape, self.dtype)))

    def cache_size(self) -> int:
        return self._rhs._cache_size()

    def solve(self, tol: float, method: str = "RK45") -> tuple[np.ndarray, int]:
        """(log p in nats, (N,); nfev of the flattened solve)."""
        sol = solve_ivp(self.fun, (self.sde.t_min, self.sde.T), self.initial_state(), method=method, rtol=tol, atol=tol)
        if sol.status != 0:
            raise RuntimeError(f"solve_ivp({method}) failed at tol={tol:g}: {sol.message}")
        z = sol.y[:, -1]
        x_T = z[: self.n * self.d].reshape(self.shape)
        log_p = np.asarray(self._prior(np.asarray(x_T, self.dtype)), np.float64) + z[self.n * self.d:]
        return log_p, int(sol.nfev)


# --- timing ----------------------------------------------------------------------------------------
def _timed(fn: Callable, repeats: int, budget_s: float = math.inf):
    """Times up to ``repeats`` calls of fn (already compiled), at least one; stops early once the
    timed calls have used ``budget_s`` or one more would exceed it.
    Returns (last output, [wall s], [CPU s], backend compilations meanwhile)."""
    walls, cpus, out = [], [], None
    c0 = compile_count()
    for _ in range(max(1, int(repeats))):
        p0, t0 = time.process_time(), time.perf_counter()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - p0)
        if sum(walls) + walls[-1] > budget_s:
            break
    return out, walls, cpus, compile_count() - c0


def _summary(label: str, n: int, dims: int, nats: np.ndarray, nfe: float, walls, cpus, compiles, compile_s) -> dict:
    bpd = np.asarray(bits_per_dim(-np.asarray(nats), dims, data_scale=2.0), np.float64)
    med = statistics.median(walls)
    return dict(side=label, nll_nats=np.asarray(nats, np.float64).tolist(), bpd=bpd.tolist(), bpd_mean=float(bpd.mean()),
                nfe=float(nfe), wall_s=walls, cpu_s=cpus, second_call_wall_s=walls[0], second_call_cpu_s=cpus[0],
                median_wall_s=med, median_cpu_s=statistics.median(cpus), images_per_s=n / med,
                ms_per_eval=1e3 * med / nfe, cpu_ms_per_eval=1e3 * statistics.median(cpus) / nfe,
                images_per_cpu_s=n / statistics.median(cpus), compiles_in_timed=int(compiles), first_call_s=compile_s)


def time_ingraph(case: Case, *, tol: float, dtype, repeats: int, key, model: EpsModel | None = None,
                 budget_s: float = math.inf) -> dict:
    """``ode_nll`` (one compiled call for the batch). Warm-up/compile + NFE + reference values by one
    ``ode_log_likelihood`` call with the arguments ``ode_nll`` passes it; then ``repeats`` timed calls."""
    model = case.model if model is None else model
    x = jnp.asarray(case.x, dtype)
    t0 = time.perf_counter()
    ref = ode_log_likelihood(model, case.sde, x, divergence="hutchinson", n_probes=1,
                             key=jax.random.fold_in(key, 0), rtol=tol, atol=tol)
    ref_nll = -np.asarray(ref.log_prob, np.float64)
    compile_s = time.perf_counter() - t0
    nfe = float(np.max(np.asarray(ref.nfe)))

    def call():
        return ode_nll(model, case.sde, x, key=key, divergence="hutchinson", n_probes=1, rtol=tol, atol=tol,
                       dtype=dtype)

    est, walls, cpus, compiles = _timed(call, repeats, budget_s)
    if compiles:
        raise RuntimeError(f"in-graph: {compiles} backend compilation(s) during timed calls; expected none.")
    if not np.array_equal(est.values, ref_nll):
        raise RuntimeError("in-graph: ode_nll does not reproduce the warm-up ode_log_likelihood values "
                           f"(max diff {np.max(np.abs(est.values - ref_nll)):.3g} nats).")
    bpd_check = to_bits_per_dim(est, case.dims).values  # the evaluation API's own conversion
    out = _summary("in-graph", case.x.shape[0], case.dims, est.values, nfe, walls, cpus, compiles, compile_s)
    np.testing.assert_allclose(out["bpd"], bpd_check, rtol=0, atol=1e-12)
    return out


def time_scipy(case: Case, *, tol: float, dtype, repeats: int, key, model: EpsModel | None = None,
               budget_s: float = math.inf) -> dict:
    """The ScoreFlow-style host loop: RHS compiled by one warm-up evaluation, then ``repeats`` solves."""
    model = case.model if model is None else model
    x = jnp.asarray(case.x, dtype)
    loop = ScipyHostLoop(model, case.sde, x, hutchinson_probes(key, x, dtype), dtype=dtype)
    t0 = time.perf_counter()
    loop.warmup()
    compile_s = time.perf_counter() - t0
    (log_p, nfev), walls, cpus, compiles = _timed(lambda: loop.solve(tol), repeats, budget_s)
    if compiles or loop.cache_size() != 1:
        raise RuntimeError(f"scipy: {compiles} backend compilation(s) during timed calls "
                           f"({loop.cache_size()} compiled RHS); expected none.")
    return _summary("scipy RK45", case.x.shape[0], case.dims, -log_p, nfev, walls, cpus, compiles, compile_s)


def reference_nll(case: Case, *, tol: float, key) -> tuple[np.ndarray, float]:
    """Untimed reference NLL (nats) with the SAME probes: the in-graph solve at a tight ``tol`` in
    float64, the network computed channels-last (the same function, and fast inside the solver loop).
    Returns (NLL per image, NFE)."""
    res = ode_log_likelihood(case.model_for("nhwc"), case.sde, jnp.asarray(case.x, jnp.float64), divergence="hutchinson",
                             n_probes=1, key=jax.random.fold_in(key, 0), rtol=tol, atol=tol)
    return -np.asarray(res.log_prob, np.float64), float(np.max(np.asarray(res.nfe)))


def run_case(case: Case, *, tol: float, dtypes: Sequence[str], repeats: int, layouts: Sequence[str] = ("nchw",),
             budget_s: float = math.inf, reference_tol: float | None = None, seed: int = 0,
             verbose: bool = True) -> list[dict]:
    """Both sides for each network layout and solve dtype: one row each, with both sides and their
    comparison; with ``reference_tol``, each side's error against :func:`reference_nll` too."""
    rows = []
    key = jax.random.key(1000 + seed)
    for layout in layouts:
        model = case.model_for(layout)
        for name in dtypes:
            dtype = DTYPES[name]
            t_case = time.perf_counter()
            ours = time_ingraph(case, tol=tol, dtype=dtype, repeats=repeats, key=key, model=model, budget_s=budget_s)
            sp = time_scipy(case, tol=tol, dtype=dtype, repeats=repeats, key=key, model=model, budget_s=budget_s)
            d_bpd = np.asarray(ours["bpd"]) - np.asarray(sp["bpd"])
            nll = np.abs(np.asarray(ours["nll_nats"]))
            row = dict(case=case.spec.name, data=case.spec.data, model=case.spec.describe(), params=case.n_params,
                       redrawn_zero_arrays=case.n_redrawn, batch=int(case.x.shape[0]), dims=case.dims, layout=layout,
                       dtype=name, tol=tol, ingraph=ours, scipy=sp,
                       ratio_wall=sp["median_wall_s"] / ours["median_wall_s"],
                       ratio_cpu=sp["median_cpu_s"] / ours["median_cpu_s"],
                       ratio_second_call=sp["second_call_wall_s"] / ours["second_call_wall_s"],
                       bpd_diff_mean=float(ours["bpd_mean"] - sp["bpd_mean"]), bpd_diff_max=float(np.max(np.abs(d_bpd))),
                       nll_diff_max_nats=float(np.max(np.abs(np.asarray(ours["nll_nats"]) - np.asarray(sp["nll_nats"])))),
                       tol_implied_bpd=tol_implied_bpd(tol, float(nll.max()), case.dims, int(case.x.shape[0])),
                       seconds=time.perf_counter() - t_case)
            rows.append(row)
            if verbose:
                print(f"  [{case.spec.name}, {layout} convs, {name}] done in {row['seconds']:.1f} s (warm-up: in-graph "
                      f"{ours['first_call_s']:.1f} s = compilation + one solve, scipy RHS {sp['first_call_s']:.1f} s)",
                      flush=True)
    if reference_tol is not None:
        t0 = time.perf_counter()
        ref, ref_nfe = reference_nll(case, tol=reference_tol, key=key)
        for row in rows:
            for side in (row["ingraph"], row["scipy"]):
                err = (np.asarray(side["nll_nats"]) - ref) / (case.dims * math.log(2.0))
                side["bpd_err_max"] = float(np.max(np.abs(err)))
                side["bpd_err_mean"] = float(np.mean(err))
            row["reference"] = dict(tol=reference_tol, nfe=ref_nfe, nll_nats=ref.tolist())
        if verbose:
            print(f"  [{case.spec.name}] reference at rtol = atol = {reference_tol:g}: NFE {ref_nfe:.0f}, "
                  f"{time.perf_counter() - t0:.1f} s", flush=True)
    return rows


def tol_implied_bpd(tol: float, max_abs_nll: float, dims: int, batch: int) -> float:
    """A generous bound on the solver-error difference of a per-image bits/dim between the two sides at
    rtol = atol = ``tol``. Each step controls an RMS of scaled errors, tol·(1 + |state|) per component:
    over one image's D + 1 components in graph (worst-sample norm), over all N (D + 1) in scipy
    (flattened batch). The log-det accumulator is ONE of those components, so its error may be up to
    √(N (D + 1)) times tol·(1 + |log p|) before scipy's step is rejected; allow a further factor 10 for
    global vs local error, and convert nats to bits/dim (÷ D ln 2)."""
    return 10.0 * tol * (1.0 + max_abs_nll) * math.sqrt(batch * (dims + 1)) / (dims * math.log(2.0))


# --- output ----------------------------------------------------------------------------------------
def print_table(rows: Sequence[dict]) -> None:
    head = (f"{'case':<34} {'convs':<5} {'dtype':<7} {'side':<10} {'img/s':>8} {'img/CPU-s':>9} {'NFE':>5} "
            f"{'ms/eval':>8} {'bits/dim':>9} {'wall 2nd':>9} {'wall med':>9} {'CPU med':>9} {'reps':>4}")
    print(head)
    print("-" * len(head))
    for r in rows:
        for s in (r["ingraph"], r["scipy"]):
            print(f"{r['case']:<34} {r['layout']:<5} {r['dtype']:<7} {s['side']:<10} {s['images_per_s']:8.3g} "
                  f"{s['images_per_cpu_s']:9.3g} {s['nfe']:5.0f} {s['ms_per_eval']:8.2f} {s['bpd_mean']:9.4f} "
                  f"{s['second_call_wall_s']:8.2f}s {s['median_wall_s']:8.2f}s {s['median_cpu_s']:8.2f}s {len(s['wall_s']):>4}")
        print(f"{'':<34} {'':<5} {'':<7} {'ratio':<10} in-graph/scipy images/s: wall {r['ratio_wall']:.2f}x (2nd call "
              f"{r['ratio_second_call']:.2f}x), CPU {r['ratio_cpu']:.2f}x;  Δbits/dim of the means "
              f"{r['bpd_diff_mean']:+.1e}, max per image {r['bpd_diff_max']:.1e} (tol-implied bound "
              f"{r['tol_implied_bpd']:.1e}); max |ΔNLL| {r['nll_diff_max_nats']:.2g} nats")
        if "reference" in r:
            i, sp = r["ingraph"], r["scipy"]
            print(f"{'':<34} {'':<5} {'':<7} {'error':<10} vs in-graph at tol {r['reference']['tol']:g} (same probes): "
                  f"max |error| in bits/dim in-graph {i['bpd_err_max']:.1e}, scipy {sp['bpd_err_max']:.1e} "
                  f"(mean error {i['bpd_err_mean']:+.1e} / {sp['bpd_err_mean']:+.1e})")


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="benchmarks/eval_throughput.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: tiny network, digits only, batch 4, tol 1e-3, nhwc, 1 repeat")
    parser.add_argument("--full", action="store_true",
                        help="full-width CIFAR-10 DDPM++ (nf=128, ch_mult (1,2,2,2), 4 blocks, attn 16), batch 64: for a GPU")
    parser.add_argument("--batch", type=int, default=None, help="batch of every case (default: per case)")
    parser.add_argument("--tol", type=float, default=None, help="rtol = atol (default 1e-5; 1e-3 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per side (default 3; 1 with --quick)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds of timed calls per side after which no further repeat starts (default 15; "
                             "inf with --full); at least one timed call is always made")
    parser.add_argument("--dtype", choices=["float64", "float32", "both"], default=None,
                        help="ODE state precision of both sides (default float64)")
    parser.add_argument("--conv-layout", choices=["nchw", "nhwc", "both"], default=None,
                        help="network as built (nhwc: DDPM++'s channels-last convolutions), the same network with "
                             "channels-first convolutions (nchw), or both (default both; nhwc with --quick or --full)")
    parser.add_argument("--reference-tol", type=float, default=None,
                        help="also solve once (untimed, in graph, float64, channels-last) at this tight tolerance "
                             "with the same probes and report each side's bits/dim error against it")
    parser.add_argument("--cases", default=None, help="comma-separated subset of digits,cifar (default both; digits with --quick, cifar with --full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write every figure to this JSON file")
    args = parser.parse_args(argv)
    if args.quick and args.full:
        parser.error("--quick and --full exclude each other")

    tol = args.tol if args.tol is not None else (1e-3 if args.quick else 1e-5)
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    budget = args.budget if args.budget is not None else (math.inf if args.full else 15.0)
    dtype_arg = args.dtype or "float64"
    dtypes = ["float64", "float32"] if dtype_arg == "both" else [dtype_arg]
    layout_arg = args.conv_layout or ("nhwc" if (args.full or args.quick) else "both")
    layouts = ["nchw", "nhwc"] if layout_arg == "both" else [layout_arg]
    specs = default_specs(quick=args.quick, full=args.full, batch=args.batch)
    names = args.cases.split(",") if args.cases else (["cifar"] if args.full else ["digits"] if args.quick else list(specs))
    unknown = [n for n in names if n not in specs]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {sorted(specs)}")

    t_start = time.perf_counter()
    load0 = os.getloadavg()
    dev = jax.devices()[0]
    print("Bits/dim evaluation throughput: in-graph ode_nll (diffrax Tsit5, one compiled call) vs the ScoreFlow-style "
          "scipy solve_ivp RK45 host loop (one jitted call per evaluation)")
    print(f"jax {jax.__version__}, diffrax {diffrax.__version__}, scipy {scipy.__version__}, backend "
          f"{jax.default_backend()} ({dev.device_kind}), {os.cpu_count()} CPUs, load avg at start {load0[0]:.2f}")
    print(f"VP SDE (t_min 1e-5), N(0, I) prior, Hutchinson with 1 Rademacher probe (the same probes on both sides), "
          f"rtol = atol = {tol:g}, float32 network, solve dtype(s) {', '.join(dtypes)}; up to {repeats} timed call(s) per "
          f"side after compilation (none started past {budget:g} s of timed calls); img/s = batch / median wall time; ms/eval = median wall time / NFE; convs: nchw = "
          "the same parameters computed channels-first (plain eqx.nn.Conv2d), nhwc = the network as built (channels-last)")
    rows, cases_info = [], []
    for n in names:
        spec = specs[n]
        case = build_case(spec, seed=args.seed)
        info = (f"{spec.name}: {spec.describe()}, {case.n_params:,} parameters, batch {spec.batch}, D = {case.dims}; "
                f"{case.n_redrawn} zero-initialised weights redrawn N(0, 1/fan_in) (temb_proj kept zero), conv_out "
                "rescaled to RMS ε̂ = 1 at t = 0.5")
        print(info, flush=True)
        cases_info.append(info)
        rows += run_case(case, tol=tol, dtypes=dtypes, repeats=repeats, layouts=layouts, budget_s=budget,
                         reference_tol=args.reference_tol, seed=args.seed)
    print()
    print_table(rows)
    total = time.perf_counter() - t_start
    load1 = os.getloadavg()
    print(f"\ntotal wall time {total:.1f} s; load avg at start {load0[0]:.2f}, at end {load1[0]:.2f} "
          f"(5-min {load1[1]:.2f}) on {os.cpu_count()} CPUs")
    result = dict(argv=list(sys.argv[1:] if argv is None else argv), quick=args.quick, full=args.full, tol=tol,
                  layouts=layouts, budget_s=budget,
                  repeats=repeats, dtypes=dtypes, seed=args.seed, cases=cases_info, rows=rows, total_seconds=total,
                  load_avg_start=load0, load_avg_end=load1, backend=jax.default_backend(), device=str(dev.device_kind),
                  versions=dict(jax=jax.__version__, diffrax=diffrax.__version__, scipy=scipy.__version__,
                                numpy=np.__version__, python=platform.python_version()))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=float) + "\n")
        print(f"figures written to {args.json}")
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
