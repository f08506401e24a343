"""Numeric checks of every bound and identity of the four seed papers on exact Gaussian mixtures.

One module per paper, sharing :mod:`numerics.checks.engine` (result record, Monte Carlo with
standard errors, log-SNR quadrature):

* :mod:`~numerics.checks.kl_dynamics` — KL(q_0‖p_0) − KL(q_T‖p_T) = ½∫g² E_q‖∇log q_t − ∇log p_t‖² dt
* :mod:`~numerics.checks.song2021` — Song et al. 2021 Theorems 1 and 2 (SM/DSM forms, ε-offset)
* :mod:`~numerics.checks.lu2022` — Lu et al. 2022: ODE KL (3.1), Cauchy–Schwarz and high-order bounds,
  second/third-order DSM minimisers
* :mod:`~numerics.checks.vdm` — Kingma et al. 2021: L_T, L_∞, schedule invariance, link to Song
* :mod:`~numerics.checks.li_yan2024` — Li & Yan 2024 density formula (continuous and DDPM) and ELBO/NLL minimisers
* :mod:`~numerics.checks.importance` — importance sampling of t for the g²-weighted DSM estimator

:mod:`~numerics.checks.affine` holds the closed-form Gaussian data / affine score-model family
(THEORY.md §6.2) and :mod:`~numerics.checks.cases` the built-in cases of ``python -m numerics report``.
"""

from numerics.checks.engine import CheckResult

__all__ = ["CheckResult"]
