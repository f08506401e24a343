"""numerics.high_order: Lu et al. 2022 high-order DSM against exact mixture posteriors (THEORY.md §3.5–3.7, §8.14–16)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from numerics import high_order as ho
from numerics.losses import dsm_loss


def _mixture3():
    return numerics.GaussianMixture(
        [0.3, 0.45, 0.25],
        [[0.0, 1.0, -0.5], [1.2, -0.8, 0.4], [-1.0, 0.3, 1.1]],
        [np.diag([0.5, 0.2, 0.3]), [[0.4, 0.1, 0.0], [0.1, 0.3, 0.05], [0.0, 0.05, 0.2]], np.diag([0.15, 0.25, 0.35])],
    )


class _TinyScore(eqx.Module):
    """A small MLP score model s_θ(x, t) (smooth, not a gradient field)."""

    mlp: eqx.nn.MLP

    def __init__(self, dim, key):
        self.mlp = eqx.nn.MLP(dim + 1, dim, 8, 2, activation=jnp.tanh, key=key, dtype=jnp.float64)

    def __call__(self, x, t):
        return self.mlp(jnp.concatenate([x, jnp.atleast_1d(t).astype(x.dtype)]))


def _posterior_eps(mix, sde, t, x_t, key, n):
    """ε | x_t by ancestral sampling of x_0 | x_t from the exact posterior mixture: ε = (x_t − α x_0)/σ."""
    w, m, S = mix.posterior(sde, t, x_t)
    k1, k2 = jax.random.split(key)
    comp = jax.random.categorical(k1, jnp.log(w), shape=(n,))
    L = jnp.linalg.cholesky(S)
    x0 = m[comp] + jnp.einsum("nij,nj->ni", L[comp], jax.random.normal(k2, (n, x_t.size)))
    return (x_t - sde.mean_coeff(t) * x0) / sde.std(t)


@pytest.mark.parametrize("case", [0, 1, 2])
def test_minimisers_exact_from_posterior_moments(case):
    """(E[ccᵀ|x]−I)/σ² = ∇²log q_t + δδᵀ and E[Y|x]/σ³ = ∇Δlog q − ‖δ‖²δ + tr(Δ₂)δ + 2Δ₂δ (THEORY.md §3.5, Eq. 3.3), exact."""
    mix, sde = _mixture3(), numerics.VPSDE()
    rng = np.random.default_rng(case)
    t = jnp.asarray([0.05, 0.3, 0.8][case])  # an array: one compilation for all cases
    q_t = mix.diffuse(sde, t)
    x = q_t.sample(jax.random.key(case), 1)[0]
    H, s = q_t.hessian(x), q_t.score(x)
    delta = 0.3 * rng.normal(size=mix.dim)
    B = 0.2 * rng.normal(size=(mix.dim, mix.dim))
    jac_hat = H + B  # Δ₂ = B (need not be symmetric)
    s2 = ho.s2_star(mix, sde, t, x, s + delta)
    scale = 1.0 + np.max(np.abs(H))
    np.testing.assert_allclose(s2, H + np.outer(delta, delta), atol=1e-9 * scale)
    assert np.linalg.norm(s2 - H) == pytest.approx(np.sum(delta**2), rel=1e-7)  # ‖s2* − H‖_F = ‖δ‖²
    s3 = ho.s3_star(mix, sde, t, x, s + delta, jac_hat)
    expected = q_t.grad_laplacian(x) - np.sum(delta**2) * delta + np.trace(B) * delta + 2 * B @ delta
    np.testing.assert_allclose(s3, expected, atol=1e-8 * (1.0 + np.max(np.abs(expected))))


def test_minimisers_by_monte_carlo_and_objectives_are_minimised_there():
    """MC of the posterior (ε | x_t, k ~ N((x_t − α m_k)/σ, α²S_k/σ²)): the empirical minimisers of the
    library's J^(2,F), J^(2,tr), J^(3) (where their gradients vanish) agree with the exact targets within 3 SE."""
    mix, sde, t = _mixture3(), numerics.VPSDE(), jnp.asarray(0.3)
    q_t = mix.diffuse(sde, t)
    x = jnp.array([0.4, 0.1, -0.2])
    sigma = sde.std(t)
    H, s, gl = q_t.hessian(x), q_t.score(x), q_t.grad_laplacian(x)
    delta = jnp.array([0.2, -0.3, 0.1])
    B = jnp.array([[0.1, 0.05, 0.0], [-0.02, 0.2, 0.1], [0.0, 0.0, -0.1]])
    jac_hat = H + B
    n = 40_000
    eps = _posterior_eps(mix, sde, t, x, jax.random.key(0), n)

    @jax.jit
    def stats(eps, s_hat, jac_hat, sigma):
        c = jax.vmap(lambda e: ho.conditional_noise_residual(s_hat, e, sigma))(eps)
        cc = jnp.einsum("ni,nj->nij", c, c)
        # J^(2,F) is quadratic in s2: its empirical minimiser is (mean ccᵀ − I)/σ², where the gradient vanishes
        s2_emp = (cc.mean(0) - jnp.eye(3)) / sigma**2
        obj2 = lambda s2: jnp.mean(jax.vmap(lambda ci: jnp.sum(ho.second_order_frobenius_residual(s2, ci, sigma) ** 2))(c))  # noqa: E731
        nc = jnp.sum(c**2, -1)
        tr_emp = (nc.mean() - 3) / sigma**2
        obj_tr = lambda tr: jnp.mean(jax.vmap(lambda ci: ho.second_order_trace_residual(tr, ci, sigma) ** 2)(c))  # noqa: E731
        Y = jax.vmap(lambda ci: ho.third_order_target(ci, jac_hat, sigma))(c)
        s3_emp = Y.mean(0) / sigma**3
        obj3 = lambda s3: jnp.mean(jax.vmap(lambda ci: jnp.sum(ho.third_order_residual(s3, ci, jac_hat, sigma) ** 2))(c))  # noqa: E731
        rel = lambda f, z: jnp.max(jnp.abs(jax.grad(f)(z))) / f(z)  # noqa: E731
        n = c.shape[0]
        return dict(
            s2=s2_emp, se2=cc.std(0, ddof=1) / jnp.sqrt(n) / sigma**2, g2=rel(obj2, s2_emp),
            tr=tr_emp, se_tr=nc.std(ddof=1) / jnp.sqrt(n) / sigma**2, g_tr=rel(obj_tr, tr_emp),
            s3=s3_emp, se3=Y.std(0, ddof=1) / jnp.sqrt(n) / sigma**3, g3=rel(obj3, s3_emp),
        )

    r = {k: np.asarray(v) for k, v in stats(eps, s + delta, jac_hat, sigma).items()}
    assert r["g2"] < 1e-9 and r["g_tr"] < 1e-9 and r["g3"] < 1e-9
    err2 = np.abs(r["s2"] - np.asarray(H + jnp.outer(delta, delta)))
    assert np.all(err2 < 3 * r["se2"]), err2 / r["se2"]
    assert abs(r["tr"] - float(jnp.trace(H) + jnp.sum(delta**2))) < 3 * r["se_tr"]
    expected = np.asarray(gl - jnp.sum(delta**2) * delta + jnp.trace(B) * delta + 2 * B @ delta)
    assert np.all(np.abs(r["s3"] - expected) < 3 * r["se3"]), (r["s3"] - expected) / r["se3"]
    np.testing.assert_allclose(ho.s3_star(mix, sde, t, x, s + delta, jac_hat), expected, rtol=1e-8, atol=1e-8)


def test_hutchinson_forms_against_exact_forms():
    """Rademacher probes: E_v‖r_F‖² = J^(2,F); E_v r_tr = exact trace residual; E_v r_3 = σ³s_3 − Y;
    E_v r_tr² = (trA)² + 2(‖A_sym‖² − ΣA_ii²) (THEORY.md §3.5–3.6, §8.16); all within 3 SE."""
    D = 3
    model = _TinyScore(D, jax.random.key(1))
    x, t, sigma = jnp.array([0.3, -0.7, 1.1]), jnp.asarray(0.4), 0.8
    e = jnp.array([0.5, -1.2, 0.3])
    n = 20_000
    V = jax.random.rademacher(jax.random.key(2), (n, D), dtype=jnp.float64)

    @eqx.filter_jit
    def compute(model, V):
        s, jac, s3 = ho.score_jacobian_and_grad_trace(model, x, t)
        # independent references for the exact derivatives: jacfwd and grad of its trace
        jac_ref = jax.jacfwd(lambda z: model(z, t))(x)
        s3_ref = jax.grad(lambda z: jnp.trace(jax.jacfwd(lambda y: model(y, t))(z)))(x)
        c = ho.conditional_noise_residual(s, e, sigma)
        A = ho.second_order_frobenius_residual(jac, c, sigma)

        def per_probe(v):
            _, jv, g = ho.sliced_score_derivatives(model, x, t, v)
            return (
                jnp.sum(ho.sliced_second_order_frobenius_residual(jv, v, c, sigma) ** 2),
                ho.sliced_second_order_trace_residual(jv, v, c, sigma),
                ho.sliced_third_order_residual(g, v, c, jv, sigma),
            )

        exact = (jnp.sum(A**2), ho.second_order_trace_residual(jnp.trace(jac), c, sigma),
                 ho.third_order_residual(s3, c, jac, sigma), ho.sliced_trace_expectation(A))
        return (jac, jac_ref, s3, s3_ref), exact, jax.vmap(per_probe)(V)

    (jac, jac_ref, s3, s3_ref), exact, sliced = compute(model, V)
    np.testing.assert_allclose(jac, jac_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s3, s3_ref, rtol=1e-10, atol=1e-12)
    exact_f, exact_tr, exact_3, tr2_expect = (np.asarray(a) for a in exact)
    f, tr, r3 = (np.asarray(a) for a in sliced)
    se = lambda a: a.std(0, ddof=1) / np.sqrt(n)  # noqa: E731
    assert abs(f.mean() - exact_f) < 3 * se(f)
    assert abs(tr.mean() - exact_tr) < 3 * se(tr)
    assert np.all(np.abs(r3.mean(0) - exact_3) < 3 * se(r3))
    assert abs((tr**2).mean() - tr2_expect) < 3 * se(tr**2)
    # and the squared sliced trace loss is NOT J^(2,tr) (the documented probe-variance term is visible)
    assert abs((tr**2).mean() - exact_tr**2) > 10 * se(tr**2)


def test_combined_loss_order1_is_dsm_loss_and_exact_pipeline():
    """order=1 reproduces numerics.losses.dsm_loss bit for bit; with the exact mixture score, the exact
    second-order terms equal ‖σ²∇²log q_t + I − ccᵀ‖² computed from the mixture Hessian (D² normalisation)."""
    mix, sde = _mixture3(), numerics.VPSDE()
    score = mix.score_fn(sde)
    x0 = mix.sample(jax.random.key(3), 6)
    key = jax.random.key(4)
    loss = eqx.filter_jit(ho.high_order_dsm_loss)
    out1 = loss(score, sde, x0, key, order=1, weighting="g2_is")
    np.testing.assert_allclose(out1.total, eqx.filter_jit(dsm_loss)(score, sde, x0, key, weighting="g2_is"), rtol=1e-14)
    assert np.all(np.asarray(out1.second_frobenius) == 0)

    out2 = loss(score, sde, x0, key, order=2, weighting="sigma2", estimator="exact", weights=(1, 0.5, 0.1))

    @jax.jit
    def expected(x0, key):
        k_t, k_eps = jax.random.split(key)
        t = numerics.sample_time(sde, k_t, (6,), "sigma2")
        eps = jax.random.normal(k_eps, x0.shape)

        def one(x0i, ti, ei):
            sg = sde.std(ti)
            xt = sde.mean_coeff(ti) * x0i + sg * ei
            c = sg * score(xt, ti) + ei
            hess = jax.jacfwd(score)(xt, ti)  # the exact ∇² log q_t, by autodiff of the exact score
            A = sg**2 * hess + jnp.eye(3) - jnp.outer(c, c)
            return jnp.sum(A**2) / 9, jnp.trace(A) ** 2 / 9

        return jax.vmap(one)(x0, t, eps)

    expect_f, expect_t = expected(x0, key)
    np.testing.assert_allclose(out2.second_frobenius, expect_f, rtol=1e-9)
    np.testing.assert_allclose(out2.second_trace, expect_t, rtol=1e-9)
    np.testing.assert_allclose(out2.total, out2.first + 0.5 * (out2.second_frobenius + out2.second_trace), rtol=1e-12)


def test_invalid_options_raise():
    mix, sde = _mixture3(), numerics.VPSDE()
    x0 = mix.sample(jax.random.key(0), 2)
    for bad in (0, 4, True):
        with pytest.raises(ValueError, match="order"):
            ho.high_order_dsm_loss(mix.score_fn(sde), sde, x0, jax.random.key(0), order=bad)
    with pytest.raises(ValueError, match="estimator"):
        ho.high_order_dsm_loss(mix.score_fn(sde), sde, x0, jax.random.key(0), estimator="sliced")
    with pytest.raises(ValueError, match="normalisation"):
        ho.high_order_dsm_loss(mix.score_fn(sde), sde, x0, jax.random.key(0), normalisation="mean")
    with pytest.raises(ValueError, match="n_probes"):
        ho.high_order_dsm_loss(mix.score_fn(sde), sde, x0, jax.random.key(0), n_probes=0)


@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_gradients_stop_through_lower_orders(estimator):
    """∇_θ of the order-2 and order-3 terms equals ∇_θ of the same objective with ŝ_1 (and ŝ_2 for
    order 3) computed from a FROZEN copy of θ: gradients flow only through the intended order."""
    D = 3
    model = _TinyScore(D, jax.random.key(5))
    sde = numerics.VPSDE()
    x0 = jax.random.normal(jax.random.key(6), (4, D))
    t = jnp.array([0.1, 0.3, 0.6, 0.9])
    eps = jax.random.normal(jax.random.key(7), (4, D))
    probes = jax.random.rademacher(jax.random.key(8), (4, 2, D), dtype=jnp.float64)
    alpha, sigma = sde.mean_coeff(t), sde.std(t)
    x_t = alpha[:, None] * x0 + sigma[:, None] * eps

    def lib(m, order):
        l2f, l2t, l3 = ho.high_order_terms(m, sde, x0, t, eps, order=order, estimator=estimator, probes=probes, normalisation="none")
        return jnp.sum(l2f + l2t) if order == 2 else jnp.sum(l3)

    def reference(m, frozen, order):
        """Explicit objective (vmapped over examples and probes): the network's own s_2 / s_3 against
        targets built from `frozen`."""

        def one(xi, ti, si, ei, vs):
            f = lambda z, mm: mm(z, ti)  # noqa: E731
            c = si * f(xi, frozen) + ei
            J_hat = jax.jacfwd(f)(xi, frozen)
            J = jax.jacfwd(f)(xi, m)
            A = si**2 * J + jnp.eye(D) - jnp.outer(c, c)
            if order == 2:
                if estimator == "exact":
                    return jnp.sum(A**2) + jnp.trace(A) ** 2
                return jnp.mean(jax.vmap(lambda v: jnp.sum((A @ v) ** 2) + (v @ A @ v) ** 2)(vs))
            if estimator == "exact":
                s3 = jax.grad(lambda z: jnp.trace(jax.jacfwd(f)(z, m)))(xi)
                Y = -(c @ c) * c + (si**2 * jnp.trace(J_hat) + D + 2) * c + 2 * si**2 * J_hat @ c
                return jnp.sum((si**3 * s3 - Y) ** 2)

            def probe(v):
                g = jax.grad(lambda z: v @ jax.jacfwd(f)(z, m) @ v)(xi)
                r = si**3 * g + (c @ v) ** 2 * c - (si**2 * v @ J_hat @ v + v @ v) * c - 2 * (v @ c) * (si**2 * J_hat @ v + v)
                return jnp.sum(r**2)

            return jnp.mean(jax.vmap(probe)(vs))

        return jnp.sum(jax.vmap(one)(x_t, t, sigma, eps, probes))

    for order in (2, 3):
        g_lib, g_ref, g_all = eqx.filter_jit(lambda model: (
            eqx.filter_grad(lambda m: lib(m, order))(model),
            eqx.filter_grad(lambda m: reference(m, jax.tree_util.tree_map(lambda a: jax.lax.stop_gradient(a) if eqx.is_array(a) else a, model), order))(model),
            eqx.filter_grad(lambda m: reference(m, m, order))(model),  # no stop-gradient: must differ
        ))(model)
        a, b, c_ = (jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(g)]) for g in (g_lib, g_ref, g_all))
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)
        assert float(jnp.max(jnp.abs(a - c_))) > 1e-4 * float(jnp.max(jnp.abs(a)))


def test_float32_follows_the_input_dtype():
    """float32 data and model ⇒ float32 terms, equal to the float64 computation at the same (t, ε, v) to float32 precision."""
    D = 3
    m64 = _TinyScore(D, jax.random.key(9))
    m32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32) if eqx.is_inexact_array(a) else a, m64)
    sde = numerics.VPSDE()
    x0 = jax.random.normal(jax.random.key(10), (4, D))
    t = jnp.array([0.1, 0.3, 0.6, 0.9])
    eps = jax.random.normal(jax.random.key(11), (4, D))
    probes = jax.random.rademacher(jax.random.key(12), (4, 1, D), dtype=jnp.float64)
    terms = eqx.filter_jit(lambda m, x, tt, e, v: ho.high_order_terms(m, sde, x, tt, e, order=3, probes=v))
    lo = terms(m32, x0.astype(jnp.float32), t.astype(jnp.float32), eps.astype(jnp.float32), probes.astype(jnp.float32))
    hi = terms(m64, x0, t, eps, probes)
    for a, b in zip(lo, hi):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6)
    out = eqx.filter_jit(ho.high_order_dsm_loss)(m32, sde, x0.astype(jnp.float32), jax.random.key(0), order=3)
    assert out.total.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out.total)))
