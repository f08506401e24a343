"""Hypothesis strategies for random mixtures and SDEs, exported for property-based tests.

    from hypothesis import given
    from numerics import strategies as st_num

    @given(st_num.mixtures(), st_num.sdes())
    def test_something(mixture, sde): ...

Mixtures have random dimension, component count, weights and well-conditioned covariances
(eigenvalues in [min_eig, max_eig], random orientation); SDEs have random parameters within
the ranges the papers use.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from numerics.mixture import GaussianMixture
from numerics.sde import VPSDE, VESDE, CosineGamma, LiYanSDE, LinearGamma, LogSNRSDE, SubVPSDE

__all__ = ["mixture_params", "mixtures", "sdes", "SDE_KINDS"]

SDE_KINDS = ("vp", "subvp", "ve", "ve_score_sde", "logsnr", "li_yan")


@st.composite
def mixture_params(
    draw,
    *,
    min_dim: int = 1,
    max_dim: int = 5,
    min_components: int = 1,
    max_components: int = 4,
    dim: int | None = None,
    min_eig: float = 0.05,
    max_eig: float = 1.0,
    mean_scale: float = 2.0,
    min_weight: float = 0.05,
):
    """(weights (K,), means (K, D), covariances (K, D, D)) as numpy float64 arrays."""
    D = dim if dim is not None else draw(st.integers(min_dim, max_dim))
    K = draw(st.integers(min_components, max_components))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0.0, 1.0, K) + min_weight * K / max(1.0 - min_weight * K, 1e-3)
    weights = raw / raw.sum()
    means = rng.uniform(-mean_scale, mean_scale, (K, D))
    covs = np.empty((K, D, D))
    for k in range(K):
        q, r = np.linalg.qr(rng.normal(size=(D, D)))
        q = q * np.sign(np.diag(r))
        eig = np.exp(rng.uniform(np.log(min_eig), np.log(max_eig), D))
        covs[k] = (q * eig) @ q.T
        covs[k] = 0.5 * (covs[k] + covs[k].T)
    return weights, means, covs


@st.composite
def mixtures(draw, **kwargs) -> GaussianMixture:
    """A random :class:`GaussianMixture`; keyword arguments as in :func:`mixture_params`."""
    return GaussianMixture(*draw(mixture_params(**kwargs)))


def _param(draw, lo: float, hi: float, continuous: bool, grid: tuple[float, ...]) -> float:
    return draw(st.floats(lo, hi)) if continuous else draw(st.sampled_from(grid))


@st.composite
def sdes(draw, kinds: tuple[str, ...] = ("vp", "subvp", "ve"), t_min: float | None = None, continuous: bool = False):
    """A random SDE of one of ``kinds`` (see :data:`SDE_KINDS`) with parameters near the papers'.

    ``t_min`` (given, or drawn from {1e-5 (the papers' VP and VE value), 1e-4, 1e-3, 1e-2}) is a
    static (compile-time) field; by default the other parameters too are drawn from a small grid
    spanning their range, so that examples share compiled code and test values. ``continuous=True``
    draws every parameter, t_min included (log-uniform), from its whole interval instead.
    """
    kind = draw(st.sampled_from(kinds))
    if t_min is not None:
        eps = t_min
    elif continuous:
        eps = 10.0 ** draw(st.floats(-5.0, -2.0))
    else:
        eps = draw(st.sampled_from([1e-5, 1e-4, 1e-3, 1e-2]))
    if kind in ("vp", "subvp"):
        beta_min = _param(draw, 0.05, 0.5, continuous, (0.1, 0.3))
        beta_max = _param(draw, 5.0, 25.0, continuous, (8.0, 20.0))
        cls = VPSDE if kind == "vp" else SubVPSDE
        return cls(beta_min, beta_max, t_min=eps)
    if kind in ("ve", "ve_score_sde"):
        sigma_min = _param(draw, 0.005, 0.05, continuous, (0.01, 0.03))
        sigma_max = _param(draw, 5.0, 80.0, continuous, (10.0, 50.0))
        return VESDE(sigma_min, sigma_max, kernel="exact" if kind == "ve" else "score_sde", t_min=eps)
    if kind == "logsnr":
        gamma_min = _param(draw, -14.0, -8.0, continuous, (-13.3, -10.0))
        gamma_max = _param(draw, 3.0, 8.0, continuous, (5.0, 8.0))
        cls = draw(st.sampled_from([LinearGamma, CosineGamma]))
        return LogSNRSDE(cls(gamma_min, gamma_max), t_min=0.0 if t_min is None else t_min)  # VDM integrates from 0
    if kind == "li_yan":
        return LiYanSDE(t_min=eps)
    raise ValueError(f"unknown SDE kind {kind!r}; choose from {SDE_KINDS}.")
