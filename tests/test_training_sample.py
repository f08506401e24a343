"""training.sample (``python -m training sample``): the three samplers of the SDE paper (Song et al.
ICLR'21, Eq. 6 reverse SDE, Alg. 1–2 predictor–corrector, Eq. 13 probability flow) with the exact
score of a Gaussian mixture against the mixture's closed-form moments and its log-density; the CLI on
a trained mixture work directory and on an untrained tiny digits model; the image grid and the 8-bit
quantisation on known arrays; usage errors."""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import matplotlib.image as mpimg
import numpy as np
import pytest

import numerics
from training import evaluate as ev
from training import sample as S
from training.data import MIXTURES, get_mixture

N_EXACT = 2000  # samples per exactness check: SE of the mean ≈ 0.025, of a covariance entry ≈ 0.03


def _cli(argv: list[str]) -> int:
    """The sub-command's own parser (the same options ``python -m training sample`` gets)."""
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    return S.run(p.parse_args(argv))


# --- exactness with the exact score -----------------------------------------------------------------


@pytest.fixture(scope="module")
def exact():
    q = get_mixture("three_blobs_2d")
    sde = numerics.VPSDE(t_min=1e-5)
    m = MIXTURES["three_blobs_2d"]  # closed-form moments from the raw parameters
    w, mu, cov_k = np.array(m["weights"]), np.array(m["means"]), np.array(m["covariances"])
    mean = w @ mu
    cov = np.einsum("k,kij->ij", w, cov_k + np.einsum("ki,kj->kij", mu, mu)) - np.outer(mean, mean)
    ref_logq = np.asarray(q.log_prob(q.sample(jax.random.key(123), 4000)))
    return q, sde, mean, cov, ref_logq


def _moment_z(x, mean, cov):
    """z-scores (estimate − truth)/SE of the two means and three covariance entries, centring at the
    true mean so each statistic is an unbiased average of i.i.d. terms."""
    d = x - mean
    terms = np.stack([d[:, 0], d[:, 1], d[:, 0] ** 2 - cov[0, 0], d[:, 0] * d[:, 1] - cov[0, 1],
                      d[:, 1] ** 2 - cov[1, 1]], axis=1)
    return terms.mean(0) / (terms.std(0, ddof=1) / np.sqrt(len(x)))


def _logq_z(q, x, ref_logq):
    """Two-sample z of the mean log q over the samples against independent samples of q (sensitive
    to the spread of each component, which the global moments barely see)."""
    lq = np.asarray(q.log_prob(x))
    return (lq.mean() - ref_logq.mean()) / np.sqrt(lq.var(ddof=1) / lq.size + ref_logq.var(ddof=1) / ref_logq.size)


@pytest.mark.parametrize("sampler", ["em", "pc", "ode"])
def test_exact_score_samples_match_the_mixture(exact, sampler):
    """With the exact score ∇log q_t each sampler draws from ≈ q_0: means and covariance within 4 SE
    of the closed form, and E[log q] within 4 SE of its value on independent samples of q. Biases:
    100 em/pc steps and tol 1e-5 measured |z| < 2 at N = 20 000; the prior N(0, I) vs q_T mismatch is
    O(α_T) = O(7e-3), Tweedie at t_min = 1e-5 shrinks variances by ~1e-6."""
    q, sde, mean, cov, ref_logq = exact
    model = ev.eps_from_score(q.score_fn(sde), sde)
    res = S.draw_samples(model, sde, (2,), sampler=sampler, num=N_EXACT, batch_size=N_EXACT, seed=1, steps=100,
                         tol=1e-5)
    assert res.samples.shape == (N_EXACT, 2) and np.all(np.isfinite(res.samples))
    z = _moment_z(res.samples, mean, cov)
    assert np.all(np.abs(z) < 4), z
    zl = _logq_z(q, res.samples, ref_logq)
    assert abs(zl) < 4, zl
    if sampler == "ode":
        assert res.nfe.shape == (N_EXACT,) and np.all(res.nfe > 20) and np.all(res.nfe < 2000)
    else:
        assert res.nfe is None


def test_wrong_score_is_detected(exact):
    """Negative control: the exact score of the mixture with every component covariance × 1.3 gives
    samples whose E[log q] the check above rejects (measured z ≈ −6.7)."""
    q, sde, mean, cov, ref_logq = exact
    m = MIXTURES["three_blobs_2d"]
    wrong = numerics.GaussianMixture(m["weights"], m["means"], (1.3 * np.array(m["covariances"])).tolist())
    res = S.draw_samples(ev.eps_from_score(wrong.score_fn(sde), sde), sde, (2,), sampler="em", num=N_EXACT,
                         batch_size=N_EXACT, seed=1, steps=100)
    assert _logq_z(q, res.samples, ref_logq) < -4


def test_deterministic_and_independent_of_num(exact):
    """Same seed → same samples; batch b keyed by fold_in(seed, b) and drawn at full size, so the
    first samples do not depend on --num (when it is at least the batch size); another seed changes them; batches differ from each other."""
    q, sde, *_ = exact
    model = ev.eps_from_score(q.score_fn(sde), sde)
    kw = dict(sampler="pc", batch_size=4, steps=10)
    a = S.draw_samples(model, sde, (2,), num=7, seed=3, **kw).samples
    b = S.draw_samples(model, sde, (2,), num=7, seed=3, **kw).samples
    c = S.draw_samples(model, sde, (2,), num=5, seed=3, **kw).samples
    d = S.draw_samples(model, sde, (2,), num=7, seed=4, **kw).samples
    assert a.shape == (7, 2) and c.shape == (5, 2)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:5], c)
    assert not np.allclose(a, d)
    assert not np.allclose(a[:3], a[4:7])


# --- 8-bit images and the grid ----------------------------------------------------------------------


def test_quantise_is_the_bin_of_the_dequantisation():
    """k = clip(⌊256 (x+1)/2⌋, 0, 255): bin centres (k + ½)/256 map back to k, the ends to 0 and
    255, out-of-range values clip, non-finite values give 0."""
    k = np.arange(256)
    x = 2 * (k + 0.5) / 256 - 1
    np.testing.assert_array_equal(S.quantise(x[None]), k[None].astype(np.uint8))
    got = S.quantise(np.array([[-1.0, 1.0, -3.0, 3.0, np.nan, 2 * 100.99 / 256 - 1]]))
    np.testing.assert_array_equal(got, [[0, 255, 0, 255, 0, 100]])
    assert got.dtype == np.uint8
    # not centred: y = x
    np.testing.assert_array_equal(S.quantise(np.array([[0.0, 0.5, 0.999]]), centered=False), [[0, 128, 255]])


def test_image_grid_exact_placement():
    """5 images of 2×3 with 2 channels, 3 columns, padding 1: shape (2·3+3, 3·4+1, 2); image i at row
    i//3, column i%3; padding and the empty sixth cell keep pad_value."""
    imgs = (np.arange(5 * 2 * 2 * 3).reshape(5, 2, 2, 3) % 200).astype(np.uint8)
    g = S.image_grid(imgs, ncol=3, padding=1, pad_value=255)
    assert g.shape == (2 * 3 + 1, 3 * 4 + 1, 2) and g.dtype == np.uint8
    mask = np.zeros(g.shape[:2], bool)
    for i in range(5):
        r, c = divmod(i, 3)
        top, left = 1 + 3 * r, 1 + 4 * c
        np.testing.assert_array_equal(g[top : top + 2, left : left + 3], imgs[i].transpose(1, 2, 0))
        mask[top : top + 2, left : left + 3] = True
    assert np.all(g[~mask] == 255)
    # default: ⌈√N⌉ columns, no padding → plain tiling
    four = np.stack([np.full((1, 2, 2), v, np.uint8) for v in (1, 2, 3, 4)])
    np.testing.assert_array_equal(S.image_grid(four, padding=0)[..., 0],
                                  [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    with pytest.raises(Exception, match="(?i)uint8"):  # ValueError; under the tests' jaxtyping hook a TypeCheckError
        S.image_grid(np.zeros((1, 1, 2, 2), np.float32))


def test_scatter_plot_1d(tmp_path):
    """The vector-data plot in 1-D (a histogram over the exact density; 2-D is the CLI test's) decodes,
    also with far outliers (counted, not plotted)."""
    q = numerics.GaussianMixture([0.4, 0.6], [[-1.0], [1.5]], [[[0.2]], [[0.3]]])
    x = np.array(q.sample(jax.random.key(0), 300))
    x[:3] = 1e3
    S.save_scatter(tmp_path / "a.png", x, q, jax.random.key(1), title="1-D")
    assert mpimg.imread(tmp_path / "a.png").shape == (600, 660, 4)


# --- the command line -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mixture_workdir(tmp_path_factory):
    from training.configs import get_config
    from training.train import train

    workdir = tmp_path_factory.mktemp("mix")
    cfg = get_config("mixture2d", ["model.width=32", "model.depth=1", "train.num_steps=300", "train.batch_size=128",
                                   "train.progress=false", "train.ckpt_every=300", "train.log_every=100"])
    train(cfg, workdir, log=lambda *a, **k: None)
    return workdir


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
    """An untrained tiny DDPM++ digits model written as a step-0 work directory (config.json and an
    orbax checkpoint of the initial state) — the layout `train` writes, without compiling a training
    step (train.num_steps=1 costs ~25 s on the 2-core machine, this ~3 s)."""
    from training.checkpoint import Checkpointer
    from training.configs import config_to_json, get_config
    from training.train import init_state

    workdir = tmp_path_factory.mktemp("digits")
    cfg = get_config("digits", ["model.nf=8", "model.ch_mult=1", "model.attn_resolutions=()",
                                "model.num_res_blocks=1", "train.batch_size=8", "train.progress=false"])
    state, *_ = init_state(cfg, (1, 8, 8))
    ck = Checkpointer(os.path.join(workdir, "checkpoints"), write=True)
    ck.save(0, state, force=True)
    ck.wait()
    ck.close()
    (workdir / "config.json").write_text(config_to_json(cfg))
    return workdir


def test_cli_mixture_run(mixture_workdir, capsys):
    """`python -m training sample` (through training.__main__) with the PC sampler on a trained
    mixture run: scatter PNG and npz at the default path, NFE and paths printed, samples finite and
    equal to draw_samples on load_model (same seed, EMA, denoising) — the CLI adds nothing of its own.
    (The CLI's ODE branch costs a ~5 s compilation more; draw_samples' ODE path is checked above.)"""
    from training.__main__ import main

    rc = main(["sample", "--workdir", str(mixture_workdir), "--sampler", "pc", "--steps", "20", "--num", "64",
               "--seed", "5", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    png = mixture_workdir / "samples" / "step300_pc.png"
    npz = png.with_suffix(".npz")
    assert png.is_file() and npz.is_file()
    assert str(png) in out and str(npz) in out and "NFE (score evaluations per sample): 41" in out
    img = mpimg.imread(png)
    assert img.shape[:2] == (600, 660)  # 5.5 × 5 in at 120 dpi
    z = np.load(npz)
    x = z["samples"]
    assert x.shape == (64, 2) and x.dtype == np.float64 and np.all(np.isfinite(x))
    assert str(z["sampler"]) == "pc" and int(z["step"]) == 300 and int(z["steps"]) == 20
    model, _, sde, _ = ev.load_model(mixture_workdir)
    ref = S.draw_samples(model, sde, (2,), sampler="pc", num=64, seed=5, steps=20)
    np.testing.assert_array_equal(x, ref.samples)


def test_cli_image_grid(digits_workdir, tmp_path, capsys):
    """4 samples of an untrained 8×8 digits model, 5 EM steps: a 2×2 grid with 1-pixel padding,
    19×19, whose pixels are exactly the uint8 samples of the npz (lossless PNG)."""
    out_png = tmp_path / "grid.png"
    rc = _cli(["--workdir", str(digits_workdir), "--sampler", "em", "--num", "4", "--steps", "5", "--out", str(out_png),
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    k = np.load(out_png.with_suffix(".npz"))["samples"]
    assert k.shape == (4, 1, 8, 8) and k.dtype == np.uint8
    img = mpimg.imread(out_png)
    assert img.shape[:2] == (19, 19)
    grey = np.round(img[..., 0] * 255).astype(np.uint8)
    np.testing.assert_array_equal(grey, S.image_grid(k)[..., 0])
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    assert len(np.unique(k)) > 2  # an untrained model still gives varied grey levels, not one value


def test_usage_errors(tmp_path, mixture_workdir, capsys):
    """Exit code 2 with a message naming the argument and the fix."""
    cases = [
        (["--workdir", str(tmp_path / "nope")], "--workdir"),
        (["--workdir", str(tmp_path)], "config.json"),
        (["--workdir", str(mixture_workdir), "--num", "0"], "--num"),
        (["--workdir", str(mixture_workdir), "--batch-size", "0"], "--batch-size"),
        (["--workdir", str(mixture_workdir), "--sampler", "ode", "--tol", "0"], "--tol"),
        (["--workdir", str(mixture_workdir), "--step", "7"], "--step 7"),
        (["--workdir", str(mixture_workdir), "--out", str(tmp_path / "x.jpg")], "--out"),
    ]
    nockpt = tmp_path / "nockpt"
    nockpt.mkdir()
    (nockpt / "config.json").write_text(json.dumps(json.loads((mixture_workdir / "config.json").read_text())))
    cases.append((["--workdir", str(nockpt)], "no checkpoint"))
    for argv, needle in cases:
        assert _cli(argv + ["--no-progress"]) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and "error:" in err, (argv, err)
    # a bad sampler: argparse's choices (exit 2), and run() itself for programmatic callers
    from training.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["sample", "--workdir", str(mixture_workdir), "--sampler", "ddim"])
    assert e.value.code == 2 and "--sampler" in capsys.readouterr().err
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    args = p.parse_args(["--workdir", str(mixture_workdir)])
    args.sampler = "ddim"
    assert S.run(args) == 2 and "--sampler" in capsys.readouterr().err
    with pytest.raises(S.UsageError, match="--num"):
        S.draw_samples(lambda x, t: x, numerics.VPSDE(), (2,), num=0)


def test_non_finite_chain_exits_3_with_the_sampler_fix(mixture_workdir, capsys, monkeypatch):
    """An em/pc chain that ends in NaN (a NaN score) raises SolverError from draw_samples instead of
    writing NaN samples (which quantise maps to black pixels); the CLI exits 3 with the em/pc fix."""
    from numerics.likelihood import SolverError

    nan_score = lambda x, t: x * jnp.nan  # noqa: E731
    for sampler in ("em", "pc"):
        with pytest.raises(SolverError, match="non-finite samples"):
            S.draw_samples(nan_score, numerics.VPSDE(), (2,), sampler=sampler, num=4, steps=3)
    real = S.draw_samples
    monkeypatch.setattr(S, "draw_samples", lambda model, *a, **k: real(nan_score, *a, **k))
    rc = _cli(["--workdir", str(mixture_workdir), "--sampler", "em", "--steps", "3", "--num", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 3 and "non-finite samples" in err and "more --steps" in err, err
