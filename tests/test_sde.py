"""numerics.sde: kernels against their defining ODEs, quadrature of the general formula, and references."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, stats

import numerics
from numerics import strategies as nst

ALL_KINDS = nst.SDE_KINDS


def _d(fn, t):
    return jax.grad(lambda u: fn(u))(jnp.asarray(t, jnp.float64))


@given(nst.sdes(kinds=ALL_KINDS, continuous=True), st.floats(0.0, 1.0))
def test_kernel_solves_its_odes(sde, u):
    """dα/dt = f α, dσ²/dt = 2 f σ² + g², and g²/σ² = −d log SNR/dt (THEORY.md §1.1, Eq. 1.1)."""
    t = 1e-4 + u * (sde.T - 1e-4)
    f, g2 = float(sde.drift_coeff(t)), float(sde.diffusion_sq(t))
    a, v = float(sde.mean_coeff(t)), float(sde.variance(t))
    assert float(_d(sde.mean_coeff, t)) == pytest.approx(f * a, rel=1e-9, abs=1e-12)
    assert float(_d(sde.variance, t)) == pytest.approx(2 * f * v + g2, rel=1e-8, abs=1e-12)
    assert -float(_d(sde.log_snr, t)) == pytest.approx(g2 / v, rel=1e-8)
    assert float(sde.log_snr_derivative(t)) == pytest.approx(-g2 / v, rel=1e-10)
    assert float(sde.log_snr(t)) == pytest.approx(math.log(a * a / v), rel=1e-9, abs=1e-9)


@given(nst.sdes(kinds=("vp", "subvp", "ve")), st.floats(0.01, 1.0))
def test_kernel_matches_quadrature_of_general_formula(sde, t):
    """α_t = exp ∫_0^t f,  σ_t² = α_t² ∫_0^t g²/α_u² du: an independent computation by scipy.quad."""
    f = lambda u: float(sde.drift_coeff(u))  # noqa: E731
    log_a = integrate.quad(f, 0.0, t, epsabs=1e-13, epsrel=1e-12)[0]
    a2 = lambda u: math.exp(2 * integrate.quad(f, 0.0, u, epsabs=1e-13, epsrel=1e-12)[0])  # noqa: E731
    var = math.exp(2 * log_a) * integrate.quad(lambda u: float(sde.diffusion_sq(u)) / a2(u), 0.0, t, epsrel=1e-10)[0]
    assert float(sde.log_mean_coeff(t)) == pytest.approx(log_a, rel=1e-9, abs=1e-12)
    assert float(sde.variance(t)) == pytest.approx(var, rel=1e-7)


def test_initial_conditions():
    for sde in (numerics.VPSDE(), numerics.SubVPSDE(), numerics.VESDE()):
        assert float(sde.mean_coeff(0.0)) == 1.0
        assert float(sde.variance(0.0)) == 0.0
    ve = numerics.VESDE(kernel="score_sde")
    assert float(ve.std(0.0)) == pytest.approx(0.01, rel=1e-14)  # σ(0) = σ_min: not a kernel from t = 0
    vdm = numerics.LogSNRSDE()
    for t in (0.0, 0.5, 1.0):
        assert float(vdm.mean_coeff(t) ** 2 + vdm.variance(t)) == pytest.approx(1.0, abs=1e-14)
    assert float(vdm.log_snr(0.0)) == pytest.approx(13.3, abs=1e-12)
    assert float(vdm.log_snr(1.0)) == pytest.approx(-5.0, abs=1e-12)


# THEORY.md §1.2 reference values (double precision).
@pytest.mark.parametrize(
    "sde, log_snr_eps, log_snr_1, z",
    [
        (numerics.VPSDE(t_min=1e-5), 13.81451555215112, -10.04995681331841, 23.86447236546953),
        (numerics.VPSDE(t_min=1e-3), 9.115429865459795, -10.04995681331841, 19.1653866787782),
        (numerics.SubVPSDE(t_min=1e-5), 27.62903210529724, -10.04991362663682, 37.67894573193405),
        (numerics.SubVPSDE(t_min=1e-2), None, -10.04991362663682, 22.48413575224870),
        (numerics.VESDE(t_min=1e-5), 17.88794663430798, -7.824045970856291, 25.71199260516427),
        (numerics.VESDE(kernel="score_sde", t_min=1e-5), None, None, 2 * math.log(5000) * (1 - 1e-5)),
    ],
)
def test_reference_log_snr_values(sde, log_snr_eps, log_snr_1, z):
    if log_snr_eps is not None:
        assert float(sde.log_snr(sde.t_min)) == pytest.approx(log_snr_eps, rel=1e-13)
    if log_snr_1 is not None:
        assert float(sde.log_snr(1.0)) == pytest.approx(log_snr_1, rel=1e-13)
    assert float(sde.importance_normaliser()) == pytest.approx(z, rel=1e-13)


def test_vp_reference_kernel_at_T():
    sde = numerics.VPSDE()
    assert float(sde.mean_coeff(1.0)) == pytest.approx(0.006571586494929615, rel=1e-14)
    assert float(sde.variance(1.0)) == pytest.approx(0.9999568142509397, rel=1e-14)


@given(nst.sdes(kinds=ALL_KINDS), st.floats(1e-12, 1.0 - 1e-12))
def test_importance_inverse_cdf_round_trip(sde, u):
    """The closed-form inverse of the IS CDF (THEORY.md §2.6) round-trips."""
    t = sde.importance_inverse_cdf(u)
    assert sde.t_min - 1e-12 <= float(t) <= sde.T + 1e-12
    assert float(sde.importance_cdf(t)) == pytest.approx(u, abs=1e-10)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_importance_inverse_cdf_stays_in_the_time_range_at_its_ends(kind):
    """u = 0 and u = 1 map to t_min and T (up to rounding inside [t_min, T]): the VE SDE's exact kernel gave
    1 + 2e-16 at u = 1, outside
    [0, T], which a later eager call refused (stratified draws (k + U)/n can round to 1)."""
    sde = {"vp": numerics.VPSDE, "subvp": numerics.SubVPSDE, "ve": numerics.VESDE,
           "ve_score_sde": lambda: numerics.VESDE(kernel="score_sde"), "li_yan": numerics.LiYanSDE,
           "logsnr": lambda: numerics.LogSNRSDE(numerics.LinearGamma())}[kind]()
    t = sde.importance_inverse_cdf(jnp.array([0.0, 1.0]))
    assert sde.t_min <= float(t[0]) <= sde.t_min * (1 + 1e-9) and sde.T * (1 - 1e-12) <= float(t[1]) <= sde.T
    assert float(numerics.VESDE().importance_inverse_cdf(1.0)) == 1.0
    sde.variance(t)  # in range: no error


@given(nst.sdes(kinds=("vp", "subvp", "ve", "logsnr")), st.floats(0.05, 0.95))
def test_importance_cdf_matches_quadrature(sde, t):
    """CDF(t) = ∫_{t_min}^t (g²/σ²) / ∫_{t_min}^T (g²/σ²), by quadrature in log t."""
    t0 = max(sde.t_min, 1e-4)
    dens = lambda s: float(sde.diffusion_sq(math.exp(s)) / sde.variance(math.exp(s))) * math.exp(s)  # noqa: E731
    num = integrate.quad(dens, math.log(t0), math.log(t), epsrel=1e-11, limit=200)[0]
    den = integrate.quad(dens, math.log(t0), math.log(sde.T), epsrel=1e-11, limit=200)[0]
    assert float(sde.importance_cdf(t, t_min=t0)) == pytest.approx(num / den, rel=1e-8)


def test_importance_samples_follow_the_density():
    """Kolmogorov–Smirnov test of importance_sample_t against the CDF (fixed seed)."""
    sde = numerics.VPSDE(t_min=1e-3)
    t = np.asarray(sde.importance_sample_t(jax.random.key(0), (20000,)))
    res = stats.kstest(t, lambda s: np.asarray(sde.importance_cdf(jnp.asarray(s))))
    assert res.pvalue > 1e-3
    assert t.min() >= 1e-3 and t.max() <= 1.0


def test_prior():
    for sde in (numerics.VPSDE(), numerics.VESDE(sigma_max=7.0)):
        x = jnp.array([[0.3, -1.2], [2.0, 0.5]])
        expected = stats.norm(0, sde.prior_std).logpdf(np.asarray(x)).sum()
        assert float(sde.prior_log_prob(x)) == pytest.approx(expected, rel=1e-12)
        s = sde.prior_sample(jax.random.key(1), (50000,))
        assert float(jnp.std(s)) == pytest.approx(float(sde.prior_std), rel=0.02)


def test_bad_parameters_raise():
    with pytest.raises(ValueError, match="beta_min"):
        numerics.VPSDE(beta_min=-0.1)
    with pytest.raises(ValueError, match="beta_max"):
        numerics.VPSDE(beta_min=1.0, beta_max=0.5)
    with pytest.raises(ValueError, match="sigma_max"):
        numerics.VESDE(sigma_min=1.0, sigma_max=0.5)
    # a Literal hint: under the tests' runtime type checking, the checker names the argument first
    with pytest.raises((ValueError, TypeError), match="kernel"):
        numerics.VESDE(kernel="song")
    with pytest.raises(ValueError, match="t_min"):
        numerics.VPSDE(t_min=0.0)
    with pytest.raises(ValueError, match="T must be"):
        numerics.VPSDE(t_min=0.5, T=0.1)


def test_time_outside_range_raises():
    sde = numerics.VPSDE()
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        numerics.check_time(sde, 1.5)
    with pytest.raises(ValueError, match="NaN"):
        numerics.check_time(sde, jnp.array([0.1, jnp.nan]))
    # traced: raises at run time inside jit
    with pytest.raises(Exception, match="must lie in"):
        jax.block_until_ready(jax.jit(lambda t: numerics.check_time(sde, t))(jnp.float64(-0.2)))


@pytest.mark.parametrize("kind", ["vp", "subvp", "ve", "logsnr", "liyan"])
def test_schedule_methods_reject_concrete_times_outside_range(kind):
    """A concrete t outside [0, T] raises in every schedule method (no silent extrapolation, e.g. a
    plausible-looking σ at t < 0); a concrete t inside works under an outer jit too (numpy check)."""
    sde = {"vp": numerics.VPSDE(), "subvp": numerics.SubVPSDE(), "ve": numerics.VESDE(),
           "logsnr": numerics.LogSNRSDE(), "liyan": numerics.LiYanSDE()}[kind]
    for method in ("drift_coeff", "diffusion_sq", "mean_coeff", "std", "log_snr"):
        with pytest.raises(ValueError, match="must lie in"):
            getattr(sde, method)(-0.05)
        with pytest.raises(ValueError, match="must lie in"):
            getattr(sde, method)(jnp.array([0.5, sde.T + 0.1]))
        inside = getattr(sde, method)(0.5 * sde.T)
        np.testing.assert_allclose(jax.jit(lambda: getattr(sde, method)(0.5 * sde.T))(), inside, rtol=1e-12, atol=1e-14)


def test_li_yan_schedule_is_finite_at_zero():
    """β(t) = 1/(1 − t): f(0) = −½, g²(0) = 1, α_0 = 1, σ_0 = 0 (through γ = logit t these were 0·∞)."""
    sde = numerics.LiYanSDE()
    assert float(sde.drift_coeff(0.0)) == -0.5 and float(sde.diffusion_sq(0.0)) == 1.0
    assert float(sde.mean_coeff(0.0)) == 1.0 and float(sde.variance(0.0)) == 0.0
    t = 0.37
    np.testing.assert_allclose(float(sde.diffusion_sq(t)), 1 / (1 - t), rtol=1e-15)
    np.testing.assert_allclose(float(sde.log_snr_derivative(t)), -sde.diffusion_sq(t) / sde.variance(t), rtol=1e-13)


def test_check_time_of_a_python_float_inside_jit():
    """check_time on a concrete time inside an outer jit (the mixture is traced, t is a float)."""
    sde = numerics.VPSDE()
    mix = numerics.GaussianMixture([0.4, 0.6], [[0.0], [1.0]], [[[1.0]], [[0.5]]])
    means = jax.jit(lambda m: m.diffuse(sde, 0.5).means)(mix)
    np.testing.assert_allclose(means, mix.diffuse(sde, 0.5).means, rtol=1e-15)


def test_decreasing_gamma_raises():
    """A γ = −log SNR that decreases gives g² = σ²γ' < 0 (NaN diffusion): rejected at construction."""
    with pytest.raises(ValueError, match="gamma must be increasing .* derivative is -18.3"):
        numerics.LogSNRSDE(numerics.LinearGamma(5.0, -13.3))
    with pytest.raises(ValueError, match="gamma must be increasing"):
        numerics.LogSNRSDE(lambda t: -13.3 + 18.3 * t - 30.0 * (t - 0.5) ** 2)  # decreasing past t = 0.8
    assert float(numerics.LogSNRSDE(numerics.CosineGamma()).diffusion_sq(0.0)) == 0.0  # γ'(0) = 0 is allowed


_PARAM_CASES = {
    "vp": lambda a, b: numerics.VPSDE(a, b),
    "subvp": lambda a, b: numerics.SubVPSDE(a, b),
    "ve_exact": lambda a, b: numerics.VESDE(a, b),
    "ve_score_sde": lambda a, b: numerics.VESDE(a, b, kernel="score_sde"),
}


@functools.cache
def _param_derivatives(name: str) -> dict:
    """(quantity, parameter) → the sympy derivative of theory.sde's closed form, lambdified."""
    import sympy as sp

    from theory import _sym
    from theory import sde as tsde

    spec, kern = tsde.spec(name), tsde.kernel(name)
    return {(q, str(p)): _sym.lambdify((tsde.t, *spec.params), sp.diff(getattr(kern, q), p), "numpy")
            for q in ("log_snr", "sigma2") for p in spec.params}


@pytest.mark.parametrize("name", sorted(_PARAM_CASES))
@given(t=st.floats(0.02, 1.0), scale=st.floats(0.5, 2.0))
def test_schedule_parameters_are_differentiable(name, t, scale):
    """β_min, β_max (σ_min, σ_max) are traced leaves of the SDE: ``jax.grad`` of log SNR(t) and σ_t²
    with respect to each equals the sympy derivative of theory.sde's closed-form kernel."""
    from theory import sde as tsde

    spec = tsde.spec(name)
    params = [float(v) * (scale if i == 1 else 1.0) for i, v in enumerate(spec.defaults.values())]
    make, derivs = _PARAM_CASES[name], _param_derivatives(name)
    for quantity, method in (("log_snr", "log_snr"), ("sigma2", "variance")):
        value, got = jax.value_and_grad(lambda a, b: getattr(make(a, b), method)(t), argnums=(0, 1))(*params)
        for p_sym, p_val, g in zip(spec.params, params, got):
            expected = float(derivs[quantity, str(p_sym)](t, *params))
            # the natural scale of ∂q/∂p is |q|/p: the VE kernel's derivative is a difference of two
            # terms of that size (σ_min² expm1(2t log r)), so the absolute error is relative to it
            scale = max(abs(float(value)), 1.0) / p_val
            assert float(g) == pytest.approx(expected, rel=1e-9, abs=1e-11 * scale), (quantity, p_sym, t)


def test_schedule_parameters_keep_float32_computations_float32():
    """The parameters are weakly typed float64 scalars: a float32 t stays float32 (training)."""
    for sde in (numerics.VPSDE(), numerics.SubVPSDE(), numerics.VESDE()):
        t = jnp.asarray([0.1, 0.5], jnp.float32)
        for q in (sde.mean_coeff(t), sde.std(t), sde.diffusion_sq(t), sde.log_snr(t)):
            assert q.dtype == jnp.float32
        assert sde.prior_sample(jax.random.key(0), (3,), jnp.float32).dtype == jnp.float32
        assert sde.prior_log_prob(jnp.ones(3, jnp.float32)).dtype == jnp.float32


def test_repr_shows_parameter_values():
    assert repr(numerics.VPSDE(0.2, 10.0)) == "VPSDE(t_min=1e-05, T=1.0, beta_min=0.2, beta_max=10.0)"


def test_sdes_with_equal_parameters_are_equal_and_hash_alike():
    """Traced parameters must not cost what the floats gave: an SDE is a dict key (numerics.checks.cases)."""
    a, b, c = numerics.VPSDE(0.1, 20.0), numerics.VPSDE(0.1, 20.0), numerics.VPSDE(0.1, 19.0)
    assert a == b and hash(a) == hash(b) and a != c
    assert {a: 1, numerics.VESDE(): 2}[b] == 1
    assert numerics.VESDE() != numerics.VESDE(kernel="score_sde")
