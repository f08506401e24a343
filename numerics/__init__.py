"""Exact Gaussian-mixture diffusion, probability-flow ODE likelihood, and checks of the bounds.

Importing :mod:`numerics` turns on float64 in JAX (``jax_enable_x64``): the identities checked
here hold to 1e-6 nats or better and need double precision. Code that wants float32/bf16 (the
training side) passes explicit dtypes. A training job on hardware without fast float64 (TPU) may
set ``NUMERICS_ENABLE_X64=0`` before the import to keep JAX's 32-bit default; the checks of this
package then lose their precision.

It also raises XLA:CPU's small-loop threshold (see :mod:`numerics._xla_cpu`; 1.5–3× faster
likelihoods of up to a few hundred points on CPU) when no JAX computation has run yet;
``NUMERICS_XLA_CPU_TUNING=0`` keeps XLA's default.
"""

import os

import jax

if os.environ.get("NUMERICS_ENABLE_X64", "1") != "0":
    jax.config.update("jax_enable_x64", True)

from numerics import _xla_cpu  # noqa: E402

XLA_CPU_TUNED = os.environ.get("NUMERICS_XLA_CPU_TUNING", "1") != "0" and _xla_cpu.tune()

from numerics import sde as _sde  # noqa: E402
from numerics.sde import *  # noqa: E402,F401,F403  (SDE, VPSDE, SubVPSDE, VESDE, LogSNRSDE, γ schedules, check_time)

__all__ = list(_sde.__all__)

from numerics.mixture import GaussianMixture, MixtureScore  # noqa: E402

__all__ += ["GaussianMixture", "MixtureScore"]

from numerics.losses import WEIGHTINGS, dsm_loss, dsm_loss_terms, sample_time, time_weight  # noqa: E402

__all__ += ["WEIGHTINGS", "dsm_loss", "dsm_loss_terms", "sample_time", "time_weight"]

from numerics.likelihood import LikelihoodResult, SolverError, bits_per_dim, ode_log_likelihood  # noqa: E402

__all__ += ["LikelihoodResult", "SolverError", "bits_per_dim", "ode_log_likelihood"]

from numerics import high_order, sampling, vdm  # noqa: E402
from numerics.losses import perturb  # noqa: E402
from numerics.sampling import euler_maruyama_sample, ode_sample, predictor_corrector_sample  # noqa: E402
from numerics.high_order import high_order_dsm_loss  # noqa: E402
from numerics.vdm import MonotoneGamma, vdm_loss  # noqa: E402

__all__ += [
    "high_order",
    "sampling",
    "vdm",
    "perturb",
    "euler_maruyama_sample",
    "ode_sample",
    "predictor_corrector_sample",
    "high_order_dsm_loss",
    "MonotoneGamma",
    "vdm_loss",
]
