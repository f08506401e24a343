"""numerics.losses: the DSM weightings of Song et al. 2021 (Eq. 7, Table 2; THEORY.md §2.2, §2.6) —
closed-form weights and the validation of t_min and of the parameterisation."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from numerics import high_order as ho
from numerics.losses import dsm_loss, dsm_loss_terms, sample_time, time_weight

BMIN, BMAX = 0.1, 20.0  # VPSDE defaults


def _vp_log_snr(t):
    """log SNR of the VP SDE in closed form: −log(e^{B(t)} − 1), B(t) = β_min t + ½(β_max − β_min) t²."""
    return -math.log(math.expm1(BMIN * t + 0.5 * (BMAX - BMIN) * t * t))


def test_time_weights_and_t_min_override_against_closed_forms():
    """With an overridden t_min = 0.01 on the VP SDE: "g2_is" weighs by Z = log SNR(t_min) − log SNR(T) and draws
    t in [t_min, T]; "g2" weighs by (T − t_min) β(t)/(1 − e^{−B(t)}); "sigma2" by T − t_min. VDM's t_min = 0 is
    accepted where log SNR(0) is finite (LinearGamma: Z = γ_max − γ_min)."""
    sde, t0 = numerics.VPSDE(), 0.01
    t = jnp.array([0.02, 0.5, 1.0])
    z = _vp_log_snr(t0) - _vp_log_snr(1.0)
    np.testing.assert_allclose(time_weight(sde, t, "g2_is", t_min=t0), z, rtol=1e-12)
    B = BMIN * np.asarray(t) + 0.5 * (BMAX - BMIN) * np.asarray(t) ** 2
    beta = BMIN + (BMAX - BMIN) * np.asarray(t)
    np.testing.assert_allclose(time_weight(sde, t, "g2", t_min=t0), (1 - t0) * beta / -np.expm1(-B), rtol=1e-12)
    np.testing.assert_allclose(time_weight(sde, t, "sigma2", t_min=t0), 1 - t0, rtol=1e-15)
    draws = np.asarray(sample_time(sde, jax.random.key(0), (256,), "g2_is", t_min=t0))
    assert draws.min() >= t0 and draws.max() <= 1.0
    vdm_sde = numerics.LogSNRSDE(numerics.LinearGamma(-13.3, 5.0))
    np.testing.assert_allclose(time_weight(vdm_sde, t, "g2_is", t_min=0.0), 18.3, rtol=1e-12)


@pytest.mark.parametrize("weighting", ["sigma2", "g2", "g2_is"])
def test_bad_t_min_raises_naming_t_min(weighting):
    """t_min outside [0, T) or not finite raises a ValueError naming t_min (t_min = 2 > T gave ≈ 0 silently), in
    sample_time, time_weight and through them dsm_loss, dsm_loss_terms and high_order_dsm_loss."""
    sde = numerics.VPSDE()
    score = lambda x, t: -x  # noqa: E731
    x0 = jnp.ones((2, 1))
    t = jnp.array([0.3, 0.6])
    for bad, msg in ((2.0, r"t_min must be < T"), (1.0, r"t_min must be < T"), (-0.1, r"t_min must be ≥ 0"),
                     (math.nan, r"t_min must be finite"), (math.inf, r"t_min must be finite")):
        with pytest.raises(ValueError, match=msg):
            sample_time(sde, jax.random.key(0), (2,), weighting, t_min=bad)
        with pytest.raises(ValueError, match=msg):
            time_weight(sde, t, weighting, t_min=bad)
        with pytest.raises(ValueError, match=msg):
            dsm_loss(score, sde, x0, jax.random.key(0), weighting=weighting, t_min=bad)
        with pytest.raises(ValueError, match=msg):
            dsm_loss_terms(score, sde, x0, t, x0, weighting, t_min=bad)
    with pytest.raises(ValueError, match="t_min must be < T"):
        ho.high_order_dsm_loss(score, sde, x0, jax.random.key(0), order=1, weighting=weighting, t_min=2.0)


def test_t_min_zero_with_an_infinite_likelihood_weight_raises():
    """On the VP SDE log SNR(0) = ∞, so Z = ∫_0^T g²/σ² dt is infinite: "g2_is" gave NaN and "g2" an unbounded
    weight. Both raise naming t_min, eagerly and at trace time inside jit (the SDE closed over); "sigma2"
    (weight σ² ≤ 1) stays valid at t_min = 0 and equals (T − 0)·½‖ε − ε̂‖²."""
    sde = numerics.VPSDE()
    score = lambda x, t: -x  # noqa: E731
    x0 = jnp.ones((2, 1))
    for weighting in ("g2", "g2_is"):
        with pytest.raises(ValueError, match=r"t_min=0.0 gives a non-finite likelihood weight"):
            dsm_loss(score, sde, x0, jax.random.key(0), weighting=weighting, t_min=0.0)
        with pytest.raises(ValueError, match=r"t_min=0.0"):
            jax.jit(lambda x, k: dsm_loss(score, sde, x, k, weighting=weighting, t_min=0.0))(x0, jax.random.key(0))
    t, eps = jnp.array([0.25, 0.75]), jnp.array([[0.5], [-1.0]])
    vals = dsm_loss_terms(lambda x, t: jnp.zeros_like(x), sde, x0, t, eps, "sigma2", parameterisation="eps", t_min=0.0)
    np.testing.assert_allclose(vals, 0.5 * np.asarray(eps[:, 0]) ** 2, rtol=1e-15)


def test_parameterisation_is_validated_and_eps_equals_score(without_jaxtyping):
    """dsm_loss_terms itself rejects a parameterisation other than "score"/"eps" ("epsilon" silently gave the
    score values); the ε̂ model and the score model s = −ε̂/σ_t give the same values (to 1e-12)."""
    sde = numerics.VPSDE()
    x0 = jnp.array([[0.3, -1.0], [2.0, 0.5]])
    t, eps = jnp.array([0.1, 0.8]), jnp.array([[0.2, 1.1], [-0.7, 0.4]])
    eps_model = lambda x, t: jnp.tanh(x) * t  # noqa: E731
    score_model = lambda x, t: -eps_model(x, t) / sde.std(t)  # noqa: E731
    for weighting in ("sigma2", "g2", "g2_is"):
        a = dsm_loss_terms(eps_model, sde, x0, t, eps, weighting, parameterisation="eps")
        b = dsm_loss_terms(score_model, sde, x0, t, eps, weighting, parameterisation="score")
        np.testing.assert_allclose(a, b, rtol=1e-12)
    for bad in ("epsilon", "Score", "x0"):
        with pytest.raises(ValueError, match=r"parameterisation must be one of \('score', 'eps'\)"):
            dsm_loss_terms(eps_model, sde, x0, t, eps, "g2", parameterisation=bad)
        with pytest.raises(ValueError, match="parameterisation"):
            eqx.filter_jit(dsm_loss)(eps_model, sde, x0, jax.random.key(0), parameterisation=bad)
    with pytest.raises(ValueError, match="weighting must be one of"):
        dsm_loss_terms(eps_model, sde, x0, t, eps, "likelihood")


def test_dsm_loss_checks_t_min_once_and_equals_its_terms(monkeypatch):
    """An eager dsm_loss evaluates the finite-Z check of t_min once (it was done by both sample_time and
    time_weight), and its value is dsm_loss_terms at the same (t, ε) draws."""
    import numerics.losses as L

    calls = []
    real = L._finite_normaliser
    monkeypatch.setattr(L, "_finite_normaliser", lambda *a: calls.append(1) or real(*a))
    sde, x0, key = numerics.VPSDE(), jnp.array([[0.3, -1.2], [2.0, 0.5], [0.0, 0.1]]), jax.random.key(4)
    score = lambda x, t: -x  # noqa: E731
    got = dsm_loss(score, sde, x0, key, weighting="g2_is", t_min=0.01)
    assert len(calls) == 1
    k_t, k_eps = jax.random.split(key)
    t = sample_time(sde, k_t, (3,), "g2_is", t_min=0.01, dtype=x0.dtype)
    eps = jax.random.normal(k_eps, x0.shape, dtype=x0.dtype)
    np.testing.assert_allclose(got, dsm_loss_terms(score, sde, x0, t, eps, "g2_is", t_min=0.01), rtol=1e-14)
