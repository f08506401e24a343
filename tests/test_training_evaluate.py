"""training.evaluate: ODE NLL and Song et al.'s ε-offset bound against closed forms on a mixture
(exact score wrapped as an ε-model), bits/dim on a tiny image batch, and loading a checkpoint."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from training import evaluate as ev
from training.data import get_mixture, load_digits


@pytest.fixture(scope="module")
def setup():
    q = get_mixture("three_blobs_2d")
    sde = numerics.VPSDE(t_min=1e-5)
    model = ev.eps_from_score(q.score_fn(sde), sde)
    x = q.sample(jax.random.key(0), 512)
    return q, sde, model, x


def test_ode_nll_of_exact_score_equals_exact_nll(setup):
    """With π = q_T, −log p^ODE_ε = −log q_ε exactly (THEORY.md §8 item 17); with the SDE prior the
    VP prior mismatch at T = 1 is per point log q_T(x_T) − log π(x_T) = O(α_T ‖μ‖ ‖x_T‖) with
    α_T ≈ 6.7e-3, so the NLL matches −log q_0 to 1e-2 per point (measured max 5e-3)."""
    q, sde, model, x = setup
    x = x[:64]
    q_T = q.diffuse(sde, sde.T)
    est = ev.ode_nll(model, sde, x, prior_log_prob=q_T.log_prob)
    nll_eps = -np.asarray(q.diffuse(sde, sde.t_min).log_prob(x))
    assert np.max(np.abs(est.values - nll_eps)) < 1e-4
    est_sde = ev.ode_nll(model, sde, x)
    assert np.max(np.abs(est_sde.values - (-np.asarray(q.log_prob(x))))) < 1e-2


def test_eps_offset_bound_at_exact_score_is_nearly_tight(setup):
    """Bound ≥ NLL − 3 SE (it is an upper bound), and bound − true NLL is small at the exact score:
    the gap is the [0, ε] Gaussian-decoder gap plus the prior mismatch, both tiny at ε = 1e-5, T = 1.
    Stated margin: |mean gap| < 0.05 nats + 3 SE (the two-dimensional NLL is ≈ 1.9 nats; the SE of the
    mean over 512 points × 64 draws is ≈ 0.07 — the likelihood-weighted DSM term is noisy)."""
    q, sde, model, x = setup
    b = ev.eps_offset_bound(model, sde, x, jax.random.key(1), n_draws=64)
    true = -np.asarray(q.log_prob(x))
    gap = b.values - true
    gap_mean, gap_se = gap.mean(), gap.std(ddof=1) / np.sqrt(gap.size)
    assert gap_mean > -3 * gap_se, (gap_mean, gap_se)
    assert abs(gap_mean) < 0.05 + 3 * gap_se, (gap_mean, gap_se)
    assert gap_se < 0.12
    assert np.all(b.stderr > 0)
    # the control variate changes only the variance
    b_plain = ev.eps_offset_bound(model, sde, x, jax.random.key(1), n_draws=64, control_variate=False)
    assert abs(b_plain.mean - b.mean) < 3 * np.hypot(b_plain.se, b.se)
    assert b_plain.se > b.se


class _TinyEps(eqx.Module):
    w: jax.Array

    def __call__(self, x, t, *, key=None):
        return self.w * jnp.tanh(x + jnp.roll(x, 1, axis=-1)) * t  # non-diagonal Jacobian


def test_bits_per_dim_on_tiny_image_batch():
    """The ODE NLL and the bound of a small (untrained) ε-model on 4 digits, in bits/dim: finite,
    per-example SEs finite, and the bound's units consistent with 8 − log₂ 2 = 7 offset."""
    images = load_digits().images[:4]
    sde = numerics.VPSDE(t_min=1e-3)
    model = ev.EpsModel(_TinyEps(jnp.asarray(0.1, jnp.float32)), sde)
    nll = ev.image_nll_bpd(model, sde, images, jax.random.key(0), n_probes=2, rtol=1e-3, atol=1e-3)
    bound = ev.image_bound_bpd(model, sde, images, jax.random.key(1), n_draws=4)
    for est in (nll, bound):
        assert est.unit == "bits/dim"
        assert est.values.shape == (4,)
        assert np.all(np.isfinite(est.values)) and np.all(np.isfinite(est.stderr))
    assert np.all(nll.stderr > 0)  # Hutchinson (D = 64 > exact_max_dim)
    # uniform density sanity of the conversion: log p = −D log 2 on [−1, 1]^D gives 8 bits/dim
    u = ev.to_bits_per_dim(ev.Estimate(np.full(3, 64 * np.log(2.0)), np.zeros(3)), 64)
    np.testing.assert_allclose(u.values, 8.0)


def test_load_model_from_workdir(tmp_path):
    """A checkpoint written as train() writes it (config.json + orbax state) loads as the EMA model."""
    import json

    from training.checkpoint import Checkpointer
    from training.configs import config_to_dict, get_config
    from training.train import init_state

    cfg = get_config("mixture2d", ["model.width=16", "model.depth=1", "train.progress=false"])
    state, static, _, _ = init_state(cfg, (2,))
    ema = jax.tree.map(lambda a: a + 0.01, state.ema)  # distinguishable from params
    state = eqx.tree_at(lambda s: (s.step, s.ema), state, (jnp.asarray(20, jnp.int32), ema))
    ck = Checkpointer(tmp_path / "checkpoints", write=True, every=10)
    ck.save(10, state, force=True)
    ck.save(20, state, force=True)
    ck.close()
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    model, cfg2, sde, step = ev.load_model(tmp_path)
    assert step == 20 and cfg2 == cfg
    assert ev.checkpoint_steps(tmp_path) == [10, 20]
    x = jnp.ones((3, 2))
    ref = jax.vmap(eqx.combine(ema, static), in_axes=(0, None))(x.astype(jnp.float32), jnp.float32(0.3))
    got = jax.vmap(model.eps, in_axes=(0, None))(x, 0.3)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6)


def test_config_from_dict_validates_what_it_reads():
    """config.json read back by eval/sample/dequant/init_from is checked by training.configs.validate:
    a hand-edited value raises naming the file and the key; the round trip of a good config is exact."""
    from training.configs import config_to_dict, get_config

    cfg = get_config("mixture2d")
    assert ev.config_from_dict(config_to_dict(cfg)) == cfg
    d = config_to_dict(cfg)
    d["train"]["keep"] = 0
    with pytest.raises(ValueError, match=r"run/config\.json: train\.keep must be an integer >= 1 \(got 0\)"):
        ev.config_from_dict(d, source="run/config.json")
    with pytest.raises(ValueError, match="expected a JSON object"):
        ev.config_from_dict([1, 2], source="run/config.json")
