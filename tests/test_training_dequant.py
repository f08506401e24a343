"""training.dequant: variational dequantisation (Song et al. 2021 §5; Ho et al. 2019 Flow++ §3.1).

1. At initialisation q(u|k) is exactly uniform (log q ≡ 0, u ~ U(0,1)); for a randomised flow the
   log-density equals an independent computation (autodiff Jacobian of ε ↦ u) and integrates to 1
   over the cube (Monte Carlo with a defensive mixture proposal, within 3 SE).
2. On held-out 8×8 digits, variational dequantisation gives a bound no worse than uniform
   dequantisation (paired, common random numbers), and in fact strictly better.
3. ``python -m training dequant`` trains, saves atomically, resumes exactly and ``load_dequantizer``
   restores the flow bit for bit.
4. Bad inputs raise errors naming the argument.
5. A save killed at any of its file operations leaves a dequantiser the loader finds; temporary
   folders of killed saves are removed; one writer at a time; ``--resume`` continues against the
   score checkpoint the dequantiser was fitted to, and names it when keep-N removed it.
"""

from __future__ import annotations

import json
import math
import re
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import numerics
from training import dequant as dq
from training import evaluate as ev
from training.data import array_fingerprint, check_images, load_digits, quantise_digits

F32 = jnp.float32


def _randomise(deq, key, scale=0.1):
    """Perturb every parameter (including the zero-initialised output convolutions) so that the flow is
    far from the identity."""
    params, static = eqx.partition(deq, eqx.is_inexact_array)
    leaves, tdef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    leaves = [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
    return eqx.combine(jax.tree.unflatten(tdef, leaves), static)


# --- 1. exactly uniform at initialisation; exact log-density -------------------------------------


def test_initial_flow_is_exactly_uniform_dequantisation():
    """log q ≡ 0 bit for bit at initialisation; u = (x + 1)·128 − k is U(0, 1): mean and variance
    within 4 SE of 1/2 and 1/12, and a Kolmogorov–Smirnov test on one pixel across images."""
    images = load_digits().images[:1024]
    deq = dq.FlowDequantizer(images.shape[1:], key=jax.random.key(0))
    x, log_q = dq.dequantize_variational(deq, images, jax.random.key(1))
    assert x.dtype == F32 and log_q.dtype == F32 and x.shape == images.shape and log_q.shape == (1024,)
    assert float(jnp.max(jnp.abs(log_q))) <= 1e-6  # measured: exactly 0.0
    u = (np.asarray(x, np.float64) + 1.0) * 128.0 - images
    assert u.min() >= 0.0 and u.max() <= 1.0
    n = u.size
    assert abs(u.mean() - 0.5) < 4 * math.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 4 * math.sqrt((1 / 80 - 1 / 144) / n)
    assert stats.kstest(u[:, 0, 3, 4], "uniform").pvalue > 1e-3
    # x lies in the bin of k, as training.data.dequantize's x = 2(k + u)/256 − 1
    lo = 2.0 * images / 256.0 - 1.0
    assert np.all(np.asarray(x) >= lo - 1e-6) and np.all(np.asarray(x) <= lo + 2.0 / 256.0 + 1e-6)


def test_log_q_matches_autodiff_jacobian():
    """log q(u|k) = log p_logistic(ε) − log|det ∂u/∂ε| with the determinant of the full Jacobian of the
    sampling map by jax.jacfwd (float64 slogdet) — independent of the coupling's log-det bookkeeping.
    Images of shape (3, 2, 2) exercise the checkerboard and the channel-alternating masks."""
    shape = (3, 2, 2)
    deq = _randomise(dq.FlowDequantizer(shape, hidden=4, n_layers=3, key=jax.random.key(0)), jax.random.key(1))
    assert deq.couplings[2].channel_mix and not deq.couplings[1].channel_mix
    k = jnp.asarray(np.random.default_rng(0).integers(0, 256, (3, *shape)), F32)
    eps = jax.random.logistic(jax.random.key(10), (3, *shape), F32)

    @jax.jit
    @jax.vmap
    def one(k, eps):
        u, log_q = deq(k, eps)
        jac = jax.jacfwd(lambda e: deq(k, e.reshape(shape))[0].reshape(-1))(eps.reshape(-1))
        return log_q, jac

    log_q, jac = (np.asarray(a, np.float64) for a in one(k, eps))
    sign, logdet = np.linalg.slogdet(jac)
    e64 = np.asarray(eps, np.float64).reshape(3, -1)
    ref = np.sum(-e64 - 2 * np.logaddexp(0.0, -e64), axis=1) - logdet
    assert np.all(sign > 0)
    assert np.all(np.abs(log_q) > 0.05)  # the randomised flow is not uniform
    np.testing.assert_allclose(log_q, ref, rtol=1e-4, atol=1e-4)


def test_q_integrates_to_one_on_the_cube():
    """log q by inverting the flow (bisection) equals the sampling path's log q at its samples, and
    ∫ q(u|k) du = 1 by Monte Carlo, proposal m = ½ U(0,1)^D + ½ q (weights q/m ≤ 2, so finite
    variance whatever the flow's tails), q at the uniform points by inverting the flow; within 3 SE."""
    shape = (3, 2, 2)
    deq = _randomise(dq.FlowDequantizer(shape, hidden=4, n_layers=3, key=jax.random.key(3)), jax.random.key(4))
    k = jnp.asarray(np.random.default_rng(1).integers(0, 256, shape), F32)
    n = 20_000
    eps = jax.random.logistic(jax.random.key(5), (n, *shape), F32)
    u_q, log_q_q = jax.jit(jax.vmap(deq, in_axes=(None, 0)))(k, eps)
    u_unif = jax.random.uniform(jax.random.key(6), (n, *shape), F32, 1e-6, 1 - 1e-6)
    log_prob = jax.jit(jax.vmap(deq.log_prob, in_axes=(None, 0)))
    log_q_u = log_prob(k, u_unif)
    # the inverse map gives the sampling path's density at its own samples
    # where u is within 1e-4 of the cube's faces, float32 logit(u) has lost precision (spacing 6e-8/(1 − u)),
    # and float32 rounds σ(z) to exactly 1 beyond z ≈ 17 (logit infinite): compare the interior only
    uq = np.asarray(u_q)
    inside = np.all(np.minimum(uq, 1 - uq) > 1e-4, axis=(1, 2, 3))
    assert inside.mean() > 0.9
    np.testing.assert_allclose(np.asarray(log_prob(k, u_q))[inside], np.asarray(log_q_q)[inside], atol=2e-3)
    lq = np.concatenate([np.asarray(log_q_q, np.float64), np.asarray(log_q_u, np.float64)])
    assert np.std(lq) > 0.2  # far from uniform
    w = 2.0 / (1.0 + np.exp(-lq))  # q/m = q/(½ + ½q)
    # stratified 50/50 sampling: the estimator is the mean of the two halves' means
    mean = 0.5 * (w[:n].mean() + w[n:].mean())
    se = 0.5 * math.sqrt(w[:n].var(ddof=1) / n + w[n:].var(ddof=1) / n)
    assert abs(mean - 1.0) < 3 * se, (mean, se)
    assert se < 0.01


# --- 2. variational vs uniform dequantisation on held-out digits --------------------------------


class _PixelMixtureScore(eqx.Module):
    """Exact score of a factorised density of centred digits: each pixel an independent mixture of
    Gaussians N(c_j, s²) at the centres of the 17 occupied 8-bit bins (the digits' grey levels), with
    per-pixel weights fitted to the training images. Under the VP SDE every component diffuses in
    closed form, N(α_t c_j, α_t² s² + σ_t²). A cheap stand-in for a trained network (no compilation of
    a U-Net): like a trained model it puts its within-bin mass towards the bin centre, the structure
    variational dequantisation can exploit; s = bin width/√12 matches uniform dequantisation's variance."""

    log_pi: jax.Array
    centres: jax.Array
    s2: float
    sde: numerics.SDE

    def __call__(self, x, t):
        shape = x.shape
        xf = x.reshape(-1, 1)
        a = self.sde.mean_coeff(t)
        var = a**2 * self.s2 + self.sde.variance(t)
        logits = self.log_pi - 0.5 * jnp.square(xf - a * self.centres) / var
        r = jax.nn.softmax(logits, axis=-1)
        return (jnp.sum(r * (a * self.centres - xf), axis=-1) / var).reshape(shape)


def _pixel_mixture_model(train_images, sde):
    levels = quantise_digits(np.arange(17))
    counts = (train_images.reshape(len(train_images), -1, 1) == levels[None, None, :]).sum(0) + 0.5
    log_pi = np.log(counts / counts.sum(-1, keepdims=True))
    centres = 2.0 * (levels.astype(np.float64) + 0.5) / 256.0 - 1.0
    score = _PixelMixtureScore(jnp.asarray(log_pi), jnp.asarray(centres), (2.0 / 256.0) ** 2 / 12.0, sde)
    return ev.eps_from_score(score, sde)


def test_variational_bound_beats_uniform_on_heldout_digits(tmp_path):
    """Song et al. 2021 §5: E_q[B(x) + log q] ≤ E_U[B(x)] after fitting q (B the ε-offset bound), on
    digits the dequantiser never saw; paired with common random numbers (same base noise, t, ε).
    Also: training resumed from a saved state (flow + Adam state) repeats the uninterrupted run exactly.

    Stated margins: VD − uniform ≤ 3 SE (the property) and, because this score model has real
    within-bin structure, a strict improvement: VD − uniform < −5 SE and below −0.06 bits/dim, about
    half the gain of the ideal q for the exact likelihood of this model: within a bin its density
    is a Gaussian of standard deviation 1/√12 (in u) truncated to [0, 1], and KL(U ‖ that) =
    log(σ Z √(2π)) + ½ nats per pixel, Z = P(|N(0,1)| < √3), i.e. 0.129 bits/dim (measured gain
    0.115 ± 0.003 after 150 steps).
    """
    images = load_digits().images
    train_images, test_images = images[:1400], images[1500:1800]
    sde = numerics.VPSDE(t_min=1e-5)
    model = _pixel_mixture_model(train_images, sde)
    kw = dict(steps=150, batch_size=64, lr=3e-3, hidden=8, n_layers=2, progress=False, log_every=50)
    saved = tmp_path / "at100"

    def checkpoint(r):
        if r.step == 100:
            dq.save_dequantizer(saved, r.dequantizer, opt_state=r.opt_state, meta={"step": r.step})

    t0 = time.perf_counter()
    res = dq.train_dequantizer(model, sde, train_images, jax.random.key(0), checkpoint=checkpoint, checkpoint_every=50,
                               **kw)
    t_train = time.perf_counter() - t0
    deq = res.dequantizer
    assert res.step == 150 and [h["step"] for h in res.history] == [50, 100, 150]
    # float32 throughout (numerics switches on x64): parameters and Adam moments
    floats = [leaf for leaf in jax.tree.leaves((deq, res.opt_state)) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    assert floats and all(leaf.dtype == F32 for leaf in floats)
    # resuming from the state saved at step 100 repeats the uninterrupted run bit for bit
    init, opt_state, cfg = dq._load_state(saved, 1.0)
    assert cfg["step"] == 100
    res2 = dq.train_dequantizer(model, sde, train_images, jax.random.key(0), init=init, opt_state=opt_state,
                                start_step=100, **kw)
    for a, b in zip(jax.tree.leaves(deq), jax.tree.leaves(res2.dequantizer)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    first, last = res.history[0], res.history[-1]
    assert all(np.isfinite(h["objective_bpd"]) for h in res.history)
    cmp = dq.compare_dequantization(model, sde, deq, test_images, jax.random.key(1), n_draws=8)
    d = cmp.difference
    print(f"\n[dequant] training {t_train:.1f} s; objective {first['objective_bpd']:.4f} (steps 1-50) → "
          f"{last['objective_bpd']:.4f} ± {last['objective_se_bpd']:.4f} bits/dim (steps 101-150)")
    print(f"[dequant] held-out {test_images.shape[0]} digits × 8 draws: {cmp}")
    assert cmp.variational.unit == "bits/dim" and cmp.uniform.values.shape == (test_images.shape[0],)
    sigma, z = 1 / math.sqrt(12), math.erf(math.sqrt(3) / math.sqrt(2))
    ideal = (math.log(sigma * z * math.sqrt(2 * math.pi)) + 0.5) / math.log(2)
    print(f"[dequant] gain {-d.mean:.4f} ± {d.se:.4f} bits/dim; ideal q for the exact likelihood: {ideal:.4f}")
    assert d.mean <= 3 * d.se
    assert d.mean < -5 * d.se and d.mean < -0.06
    # paired difference equals the difference of the two estimates
    assert abs(d.mean - (cmp.variational.mean - cmp.uniform.mean)) < 1e-9
    # the uniform bound of the same model agrees with training.evaluate's (independent draws)
    ref = ev.image_bound_bpd(model, sde, test_images[:100], jax.random.key(2), n_draws=4, dtype=F32)
    un = cmp.uniform.values[:100]
    assert abs(ref.mean - un.mean()) < 3 * math.hypot(ref.se, un.std(ddof=1) / 10)


# --- 3. command line: train, save, resume, load -----------------------------------------------------


_DIGITS_TINY = ["model.nf=4", "model.ch_mult=1", "model.num_res_blocks=1", "model.attn_resolutions=", "model.dropout=0"]


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory, fake_workdir):
    return fake_workdir(tmp_path_factory.mktemp("deq_digits"), "digits", _DIGITS_TINY, (1, 8, 8))


def test_cli_holds_out_images_neither_model_saw(digits_workdir, tmp_path):
    """The CLI's final comparison images: for a score model trained on the digits' training split (the
    presets), ``--eval-images`` of the 297 test digits, and the dequantiser trains on all 1500 training
    digits; for a model trained on ``data.split=test`` the test digits are not unseen by it, so the images
    are held out from the dequantiser's training only (disjoint from it) and the recorded source says so.
    Images other than those the score model trained on (its run's data.json) are refused, naming both
    fingerprints."""
    import argparse
    import contextlib
    import json
    import shutil

    from training.data import DIGITS_TEST_SIZE

    def prepared(workdir, *flags):
        p = argparse.ArgumentParser()
        dq.add_arguments(p)
        args = p.parse_args(["--workdir", str(workdir), "--no-progress", *flags])
        with contextlib.ExitStack() as held:
            return dq._prepare(args, str(workdir), held)

    train, test = load_digits("train").images, load_digits("test").images
    setup = prepared(digits_workdir, "--eval-images", "40")
    assert setup.eval_source.startswith("test split") and setup.eval_images.shape == (40, 1, 8, 8)
    rows = {r.tobytes() for r in test}
    assert all(im.tobytes() in rows for im in setup.eval_images)
    np.testing.assert_array_equal(setup.images[setup.tr_idx], train)
    assert prepared(digits_workdir, "--eval-images", "1000").eval_images.shape[0] == DIGITS_TEST_SIZE

    w = tmp_path / "trained_on_test"
    shutil.copytree(digits_workdir, w)
    cfg = json.loads((w / "config.json").read_text())
    cfg["data"]["split"] = "test"
    (w / "config.json").write_text(json.dumps(cfg))
    # data.json still records the training split: these are not the images the model trained on
    with pytest.raises(ValueError, match=rf"the training config's data differ from those the score model in "
                                         rf"{re.escape(str(w))} was trained on \(fingerprint {array_fingerprint(test)}, "
                                         rf"recorded {array_fingerprint(train)} in .*data\.json\).*Pass --data-dir"):
        prepared(w, "--eval-images", "40")
    (w / "data.json").write_text(json.dumps({"fingerprint": array_fingerprint(test), "data": cfg["data"]}))
    setup = prepared(w, "--eval-images", "40")
    assert "'test'" in setup.eval_source and "dequantiser only" in setup.eval_source
    seen = {setup.images[i].tobytes() for i in setup.tr_idx}
    assert setup.eval_images.shape[0] == 40 and not any(im.tobytes() in seen for im in setup.eval_images)
    assert len(setup.tr_idx) == DIGITS_TEST_SIZE - 40 and {im.tobytes() for im in setup.images} <= rows


def test_cli_trains_saves_resumes_and_loads(digits_workdir, tmp_path, capsys):
    """``python -m training dequant`` on a (tiny, perturbed DDPM++) digits work directory: 12 steps with a
    checkpoint every 6; a second run refuses to overwrite without --resume, and refuses a --resume that
    changes the run; ``--resume`` continues to 16 steps (a last history window of 4 steps, named so);
    ``load_dequantizer`` returns the trained flow; a save/load round trip is exact. (That a resumed run
    repeats an uninterrupted one bit for bit is checked on the cheap model of the held-out test.)"""
    import shutil

    from training.__main__ import main

    common = ["--batch-size", "16", "--hidden", "4", "--layers", "2", "--components", "2", "--no-progress",
              "--log-every", "6", "--ckpt-every", "6", "--eval-images", "0"]
    w1 = tmp_path / "a"
    shutil.copytree(digits_workdir, w1)
    assert dq.load_dequantizer(w1) is None
    assert main(["dequant", "--workdir", str(w1), "--steps", "12", *common]) == 0
    cfg = json.loads((w1 / "dequantizer" / "config.json").read_text())
    assert cfg["step"] == 12 and cfg["score_step"] == 5 and [h["step"] for h in cfg["history"]] == [6, 12]
    first = dq.load_dequantizer(w1)
    assert main(["dequant", "--workdir", str(w1), "--steps", "12", *common]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["dequant", "--workdir", str(w1), "--steps", "18", "--resume", *common, "--batch-size", "8"]) == 2
    assert "--batch-size differ" in capsys.readouterr().err
    assert main(["dequant", "--workdir", str(w1), "--steps", "16", "--resume", *common]) == 0
    assert "bits/dim (steps 13-16)" in capsys.readouterr().out  # the last window, short of --log-every
    a = dq.load_dequantizer(w1)
    cfg = json.loads((w1 / "dequantizer" / "config.json").read_text())
    assert cfg["step"] == 16 and [(h["first_step"], h["step"]) for h in cfg["history"]] == [(1, 6), (7, 12), (13, 16)]
    assert any(not np.array_equal(np.asarray(la), np.asarray(lb))
               for la, lb in zip(jax.tree.leaves(first), jax.tree.leaves(a)))  # the resumed steps changed it
    images = load_digits().images[:8]
    xa, qa = dq.dequantize_variational(a, images, jax.random.key(3))
    assert float(jnp.max(jnp.abs(qa))) > 0  # trained away from uniform
    # save/load round trip of an arbitrary flow is exact
    r = _randomise(dq.FlowDequantizer((1, 8, 8), hidden=4, n_layers=2, n_components=2, key=jax.random.key(9)),
                   jax.random.key(10))
    dq.save_dequantizer(tmp_path / "c", r)
    r2 = dq.load_dequantizer(tmp_path / "c")
    x1, q1 = dq.dequantize_variational(r, images, jax.random.key(3))
    x2, q2 = dq.dequantize_variational(r2, images, jax.random.key(3))
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(x2))
    np.testing.assert_array_equal(np.asarray(q1), np.asarray(q2))
    r3, saved = dq.load_dequantizer(tmp_path / "c", with_config=True)
    assert saved["hidden"] == 4 and saved["n_layers"] == 2 and jax.tree.all(jax.tree.map(jnp.array_equal, eqx.filter(r3, eqx.is_array), eqx.filter(r2, eqx.is_array)))
    flow = tmp_path / "c" / "dequantizer" / "flow.eqx"  # a damaged save: an error naming the file and the fix
    intact = flow.read_bytes()
    flow.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(ValueError, match=rf"{re.escape(str(flow))} cannot be read .*remove .*python -m training dequant"):
        dq.load_dequantizer(tmp_path / "c")
    flow.write_bytes(intact)
    # no temporary left behind (.dequantizer.lock: the lock of the dequantiser's writer, training.dequant._lock)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [".dequantizer.lock", "dequantizer"]


# --- 4. bad inputs ------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(tmp_path, capsys):
    from training.__main__ import main

    images = load_digits().images[:4]
    deq = dq.FlowDequantizer((1, 8, 8), hidden=4, n_layers=1, key=jax.random.key(0))
    key = jax.random.key(0)
    # the project's tests check jaxtyping annotations at run time (TypeError); without them, ValueError
    with pytest.raises((ValueError, TypeError), match="images_uint8"):
        dq.dequantize_variational(deq, images.astype(np.float32), key)
    with pytest.raises((ValueError, TypeError), match="images_uint8"):
        dq.dequantize_variational(deq, images[0], key)
    with pytest.raises(ValueError, match=r"images_uint8 has images of shape \(1, 4, 4\)"):
        dq.dequantize_variational(deq, images[:, :, :4, :4], key)
    with pytest.raises(ValueError, match="dtype uint8"):
        check_images(images.astype(np.float32), None)
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        check_images(images[0], None)
    with pytest.raises(ValueError, match="image_shape"):
        dq.FlowDequantizer((8, 8), key=key)
    with pytest.raises(ValueError, match="fewer than one batch"):
        dq.train_dequantizer(None, numerics.VPSDE(), images, key, steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="lr"):
        dq.train_dequantizer(None, numerics.VPSDE(), images, key, steps=1, batch_size=2, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="n_draws"):
        dq.compare_dequantization(None, numerics.VPSDE(), deq, images, key, n_draws=1)
    assert dq.load_dequantizer(tmp_path) is None
    # workdir without a model
    assert main(["dequant", "--workdir", str(tmp_path / "missing"), "--steps", "1"]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["dequant", "--workdir", str(tmp_path / "empty"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "no config.json" in err and "python -m training train" in err
    # a model of non-image data
    from training.configs import get_config

    with pytest.raises(ValueError, match="8-bit image data"):
        dq._images_of(get_config("mixture2d"), None)
    with pytest.raises(ValueError, match="--data-dir"):
        dq._images_of(get_config("cifar10_vp_ddpmpp_g2_is"), None)


# --- 5. saving: a usable copy at every instant; one writer; resume after keep-N ---------------------------


class _Killed(BaseException):
    """A kill at a file operation: nothing after it runs (not even cleanup handlers)."""


def _tiny_flow(seed: int):
    return _randomise(dq.FlowDequantizer((1, 4, 4), hidden=2, n_layers=1, n_components=1, key=jax.random.key(0)),
                      jax.random.key(seed))


def _same(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _save_killed_at(monkeypatch, workdir, flow, k: int) -> bool:
    """save_dequantizer(workdir, flow) killed at its k-th rename or rmtree (0-based): from then on no
    rename or rmtree happens, as in a dead process. False if the save finished before the k-th."""
    import os
    import shutil

    real = {"rename": os.rename, "rmtree": shutil.rmtree}
    count = [0]

    def fake(name):
        def op(*args, **kwargs):
            count[0] += 1
            if count[0] - 1 == k:
                raise _Killed
            if count[0] - 1 > k:
                return None
            return real[name](*args, **kwargs)

        return op

    with monkeypatch.context() as m:
        m.setattr(os, "rename", fake("rename"))
        m.setattr(shutil, "rmtree", fake("rmtree"))
        try:
            dq.save_dequantizer(workdir, flow)
        except _Killed:
            return True
    return False


@pytest.mark.parametrize("start", ["saved", "cut between renames"])
def test_a_save_killed_at_any_point_leaves_a_copy_the_loader_finds(tmp_path, monkeypatch, start):
    """A save of flow B over flow A, killed at each of its renames and removals in turn, leaves A or B
    for load_dequantizer, starting from a normal save of A and from the state a kill between the two
    renames of an earlier save leaves (only ``dequantizer.old``, holding A). The old save removed
    that ``.old`` before its new version was in place, so a kill there lost both. The next save
    removes the kill's temporary folders and its leftover ``.old``."""
    import os
    import shutil

    a, b, c = _tiny_flow(1), _tiny_flow(2), _tiny_flow(3)
    k = 0
    while True:
        w = tmp_path / f"{start}-{k}"
        dq.save_dequantizer(w, a)
        if start == "cut between renames":
            os.rename(w / "dequantizer", w / "dequantizer.old")
        if not _save_killed_at(monkeypatch, w, b, k):
            break
        found = dq.load_dequantizer(w)
        assert found is not None, f"killed at file operation {k}: no dequantiser left in {sorted(os.listdir(w))}"
        assert _same(found, a) or _same(found, b), k
        dq.save_dequantizer(w, c)
        assert _same(dq.load_dequantizer(w), c)
        assert sorted(os.listdir(w)) == [".dequantizer.lock", "dequantizer"], k
        shutil.rmtree(w)
        k += 1
    assert k >= 2 and _same(dq.load_dequantizer(w), b)


def test_stale_temporary_folders_are_removed_unless_a_dequantiser_run_is_live(tmp_path):
    """The temporary folder of a save a kill cut short is removed by the next load, unless another
    process holds the dequantiser's lock (its save may be in flight): then the loader leaves it, and
    a save refuses, naming the holder."""
    import fcntl
    import os

    from training.fileio import DirectoryBusyError

    a = _tiny_flow(1)
    dq.save_dequantizer(tmp_path, a)
    stale = tmp_path / ".dequantizer.tmp-abc123"
    stale.mkdir()
    (stale / "flow.eqx").write_bytes(b"cut short")
    fd = os.open(tmp_path / ".dequantizer.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, b"pid 4242 on host elsewhere: dequantiser training")
    try:
        assert _same(dq.load_dequantizer(tmp_path), a) and stale.exists()
        with pytest.raises(DirectoryBusyError, match=r"in use by another process \(pid 4242 on host elsewhere"):
            dq.save_dequantizer(tmp_path, _tiny_flow(2))
    finally:
        os.close(fd)
    assert _same(dq.load_dequantizer(tmp_path), a) and not stale.exists()


def _add_score_checkpoint(workdir, step: int, keep: int):
    """A later checkpoint of the score model, as a training run going on saves it with train.keep=keep."""
    from training.checkpoint import Checkpointer
    from training.evaluate import config_from_dict
    from training.train import load_state

    cfg = config_from_dict(json.loads((workdir / "config.json").read_text()))
    state, _ = load_state(cfg, workdir)
    ck = Checkpointer(workdir / "checkpoints", write=True, keep=keep, every=1)
    ck.save(step, state, force=True)
    ck.close()


def test_resume_continues_against_the_score_checkpoint_it_was_fitted_to(digits_workdir, tmp_path, capsys):
    """The dequantiser is fitted to score checkpoint 5; the score model goes on training. ``--resume``
    continues against step 5 while it exists (it used to take the latest, 10, and refuse), refuses a
    --step other than 5, and once keep-N removed step 5, names that step, the steps left and --step. A
    dequantiser fitted to other training images is not resumed."""
    import shutil

    from training.__main__ import main

    common = ["--batch-size", "16", "--hidden", "4", "--layers", "2", "--components", "2", "--no-progress",
              "--log-every", "2", "--ckpt-every", "2", "--eval-images", "0"]  # the flow of the test above: compiled
    w = tmp_path / "run"
    shutil.copytree(digits_workdir, w)
    assert main(["dequant", "--workdir", str(w), "--steps", "2", *common]) == 0
    _add_score_checkpoint(w, 10, keep=2)
    capsys.readouterr()
    assert main(["dequant", "--workdir", str(w), "--steps", "4", "--resume", *common]) == 0
    assert "resuming the dequantiser from step 2 (score checkpoint 5)" in capsys.readouterr().err
    path = w / "dequantizer" / "config.json"
    cfg = json.loads(path.read_text())
    assert cfg["step"] == 4 and cfg["score_step"] == 5
    assert cfg["train_images"] == array_fingerprint(load_digits("train").images)  # all 1500 training digits
    # a dequantiser fitted to other images (a changed data folder; before session 13, the training split less
    # the held-out images, recorded by their number only) is not continued on these
    for changed in ({"train_images": "0123456789abcdef"}, {"train_images": None, "n_train_images": 1244}):
        path.write_text(json.dumps({**cfg, **changed}))
        assert main(["dequant", "--workdir", str(w), "--steps", "6", "--resume", *common]) == 2
        was = "fingerprint 0123456789abcdef" if changed["train_images"] else "1244 images"
        assert f"was trained on other images ({was}) than this run would train on" in capsys.readouterr().err
    path.write_text(json.dumps(cfg))
    assert main(["dequant", "--workdir", str(w), "--steps", "6", "--resume", "--step", "10", *common]) == 2
    assert "fitted to score checkpoint step 5; leave --step out" in capsys.readouterr().err
    _add_score_checkpoint(w, 15, keep=1)  # keep-N removes steps 5 and 10
    assert main(["dequant", "--workdir", str(w), "--steps", "6", "--resume", *common]) == 2
    err = capsys.readouterr().err
    assert "fitted to score checkpoint step 5, which is no longer in" in err
    assert "available steps: [15]" in err and "--step N" in err
