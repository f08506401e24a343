"""Tests of training/: learning a known mixture's score, dtypes, data, CIFAR-10 reader, DDPM++, errors.

Multi-device and kill-and-resume tests, which need fresh processes, are in
tests/test_training_subprocess.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import re
import shutil
import tarfile

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from training import data as tdata
from training.configs import PRESETS, apply_overrides, get_config
from training.networks import DDPMpp, MLPScoreNet, count_params
from training.train import NonFiniteLossError, build_sde, load_state, train

F32 = jnp.float32


# --- the central check: training reaches the exact-score value of the g²-weighted DSM loss ----------


@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    """Train the MLP preset on the 2-D three-blob mixture for 2000 steps (about 10-25 s on 2 cores)."""
    cfg = get_config(
        "mixture2d", ["train.num_steps=2000", "train.log_every=500", "train.ckpt_every=1000", "train.progress=false"]
    )
    workdir = tmp_path_factory.mktemp("mixture_run")
    result = train(cfg, workdir)
    return cfg, workdir, result


def test_mlp_learns_exact_dsm_value_of_mixture(mixture_run):
    """J_DSM(θ; g²) − J_DSM(true score; g²) = J_SM(θ; g²) ≥ 0 (THEORY.md §2.5, Eq. 2.2).

    Both are estimated on the SAME (x₀, t, ε) (common random numbers through
    numerics.dsm_loss_terms, t ~ p_IS), so the difference has a small standard error. The exact
    value comes from the mixture's closed-form score (numerics). Stated margin: after 2000 steps
    the EMA model's excess is below 0.1 nats, i.e. under 1% of J_DSM(true) ≈ 12.8 nats
    (measured 0.033 ± 0.005); an untrained (ε̂ ≡ 0) model's excess is about 10 nats.
    """
    cfg, _, result = mixture_run
    sde = build_sde(cfg.sde)
    mix = tdata.get_mixture(cfg.data.mixture)
    n = 40_000
    k0, k1, k2 = jax.random.split(jax.random.PRNGKey(2024), 3)
    x0 = mix.sample(k0, n)
    t = numerics.sample_time(sde, k1, (n,), "g2_is")
    eps = jax.random.normal(k2, x0.shape)
    true_terms = np.asarray(numerics.dsm_loss_terms(mix.score_fn(sde), sde, x0, t, eps, "g2_is"))

    def excess(params):
        model = eqx.combine(params, result.static)
        terms = numerics.dsm_loss_terms(
            lambda x, s: model(x, s), sde, x0.astype(F32), t.astype(F32), eps.astype(F32), "g2_is", parameterisation="eps"
        )
        d = np.asarray(terms, np.float64) - true_terms
        return d.mean(), d.std(ddof=1) / np.sqrt(n)

    j_true = true_terms.mean()
    ex_ema, se_ema = excess(result.state.ema)
    zero = jax.tree.map(jnp.zeros_like, result.state.ema)
    ex_zero, _ = excess(zero)
    print(f"J_DSM(true) = {j_true:.3f} ± {true_terms.std() / np.sqrt(n):.3f}; excess EMA = {ex_ema:.4f} ± {se_ema:.4f}; "
          f"excess(ε̂=0) = {ex_zero:.2f}")
    assert 11.0 < j_true < 14.5
    assert ex_ema > -3 * se_ema  # J_SM ≥ 0
    assert ex_ema < 0.1, f"excess {ex_ema:.4f} ± {se_ema:.4f} nats over the exact-score value"
    assert ex_zero > 5.0


def test_is_trained_nll_and_bound_near_the_entropy(mixture_run):
    """Issue 6 / Song et al. 2021 Thm 2 on data with known entropy: after λ = g² + IS training (the
    fixture, 2000 steps), on the same 400 test points x ~ q (paired with −log q(x)):
    the ODE NLL (exact trace, rtol = atol = 1e-5) and the ε-offset bound (16 IS draws per point)
    are both within 0.25 nats of the true entropy H(q) (measured ≈ 0.06 and ≈ 0.1), both exceed H
    beyond −3 SE (cross-entropy ≥ entropy), and bound ≥ NLL − 3 SE."""
    from training import evaluate as ev

    _, workdir, _ = mixture_run
    model, cfg, sde, _ = ev.load_model(workdir)
    mix = tdata.get_mixture(cfg.data.mixture)
    n = 400
    x = mix.sample(jax.random.PRNGKey(31), n)
    true = -np.asarray(mix.log_prob(x))
    nll = ev.ode_nll(model, sde, x).values
    bound = ev.eps_offset_bound(model, sde, x, jax.random.PRNGKey(32), n_draws=16).values

    def paired(a, b):
        d = a - b
        return d.mean(), d.std(ddof=1) / np.sqrt(n)

    (g_nll, s_nll), (g_b, s_b), (g_bn, s_bn) = paired(nll, true), paired(bound, true), paired(bound, nll)
    print(f"H = {true.mean():.4f}; NLL − H = {g_nll:.4f} ± {s_nll:.4f}; bound − H = {g_b:.4f} ± {s_b:.4f}; "
          f"bound − NLL = {g_bn:.4f} ± {s_bn:.4f}")
    assert -3 * s_nll < g_nll < 0.25
    assert -3 * s_b < g_b < 0.25
    assert g_bn > -3 * s_bn


def test_trained_state_is_float32_and_metrics_logged(mixture_run):
    cfg, workdir, result = mixture_run
    for path, leaf in jax.tree_util.tree_leaves_with_path((result.state.params, result.state.ema)):
        assert leaf.dtype == F32, jax.tree_util.keystr(path)
    from training.metrics import read_metrics

    recs = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in recs] == [500, 1000, 1500, 2000]
    for key in ("loss", "loss_se", "lr", "grad_norm", "step_time_s", "images_per_s", "eps_mse_low_noise"):
        assert np.isfinite(recs[-1][key]), key
    assert recs[-1]["lr"] == pytest.approx(cfg.optim.lr, rel=1e-6)
    assert recs[-1]["loss_window_mean"] < recs[0]["loss_window_mean"]
    # checkpoints: keep-N of the periodic ones, latest = final
    restored, _ = load_state(cfg, workdir)
    assert int(restored.step) == 2000
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(result.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_train_step_loss_and_update_are_float32(mixture_run):
    """numerics turns on x64; a training step must stay float32 (loss, parameters, optimiser state, EMA)."""
    assert jax.config.jax_enable_x64
    _, _, result = mixture_run
    m = result.last_metrics
    assert m["loss"].dtype == F32 and m["loss"].shape == () and np.isfinite(float(m["loss"]))
    assert all(v.dtype == F32 for v in m.values())
    for leaf in jax.tree.leaves((result.state.params, result.state.ema)):
        assert leaf.dtype == F32
    for leaf in jax.tree.leaves(result.state.opt_state):
        assert leaf.dtype in (F32, jnp.int32)
    assert result.state.step.dtype == jnp.int32


def test_non_finite_loss_stops_with_step_and_keeps_last_checkpoint(tmp_path):
    """lr = 1e30·min(step/1000, 1): step 0 has lr 0, step 1 blows the parameters up, step 2's loss is inf."""
    cfg = get_config(
        "mixture2d",
        ["model.width=16", "model.depth=1", "train.batch_size=8", "optim.lr=1e30", "optim.warmup=1000",
         "optim.grad_clip=0", "train.num_steps=50", "train.ckpt_every=1", "train.keep=10", "train.progress=false"],
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at step 2\b.*checkpoint \(step 2\) is intact"):
        train(cfg, tmp_path)
    restored, _ = load_state(cfg, tmp_path)
    assert int(restored.step) == 2
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(restored.params))


def test_existing_checkpoints_need_resume(mixture_run):
    cfg, workdir, _ = mixture_run
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, workdir)
    changed = apply_overrides(cfg, ["optim.lr=1e-3"])
    with pytest.raises(ValueError, match=r"config differs.*: optim\.lr: saved 0\.002, given 0\.001\. Only "):
        train(changed, workdir, resume=True)


# --- resume: config.json and metrics.jsonl ---------------------------------------------------------------

TINY = ["model.width=16", "model.depth=1", "train.batch_size=8", "train.progress=false"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """15 steps of a tiny MLP: a metrics record at step 10, the one checkpoint at step 15 (a few seconds)."""
    cfg = get_config("mixture2d", TINY + ["train.num_steps=15", "train.log_every=10", "train.ckpt_every=15"])
    workdir = tmp_path_factory.mktemp("tiny_run")
    train(cfg, workdir, log=lambda *a: None)
    return cfg, workdir


def _copy_run(tiny_run, dst):
    shutil.copytree(tiny_run[1], dst)
    return dst


def test_resume_refuses_other_training_data(tiny_run, tmp_path):
    """DIR/data.json records the fingerprint of the training data (here the mixture's parameters). A
    resume whose data have another fingerprint (as after a replaced CIFAR-10 folder, or the digits'
    split) is refused before anything runs, naming both fingerprints and the file; a run that predates
    the record is resumed and recorded. The image stream's fingerprint is that of its images."""
    from training.data import ImageStream, MixtureStream, array_fingerprint, load_digits

    cfg, _ = tiny_run
    workdir = _copy_run(tiny_run, tmp_path / "run")
    record = json.loads((workdir / "data.json").read_text())
    expected = array_fingerprint(*jax.tree.leaves(MixtureStream(cfg.data.mixture).mixture))
    assert record["fingerprint"] == expected and record["data"]["mixture"] == cfg.data.mixture
    record["fingerprint"] = "0123456789abcdef"
    (workdir / "data.json").write_text(json.dumps(record))
    more = apply_overrides(cfg, ["train.num_steps=16"])
    with pytest.raises(ValueError, match=r"--resume: the training data differ from those the run in .* started on "
                                         rf"\(fingerprint 0123456789abcdef in {re.escape(str(workdir))}/data\.json, "
                                         rf"{expected} now.*start afresh in a new --workdir"):
        train(more, workdir, resume=True, log=lambda *a: None)
    (workdir / "data.json").unlink()
    assert train(more, workdir, resume=True, log=lambda *a: None).last_checkpoint == 16
    assert json.loads((workdir / "data.json").read_text())["fingerprint"] == expected

    digits = load_digits("train")
    assert ImageStream(digits, 8, seed=0).fingerprint() == array_fingerprint(digits.images)
    assert ImageStream(load_digits("test"), 8, seed=0).fingerprint() != array_fingerprint(digits.images)


def test_resume_names_each_changed_field_and_exactly_the_fields_that_may_change(tiny_run):
    """Every field in which a resumed config differs is named with both values; the fields the message
    says may change are exactly those a resume accepts changed (all others are refused)."""
    from training.train import _check_resume_config

    cfg, workdir = tiny_run
    changed = apply_overrides(cfg, ["optim.lr=0.5", "loss.weighting=sigma2", "train.num_steps=20"])
    with pytest.raises(ValueError, match="config differs") as err:
        train(changed, workdir, resume=True)
    msg = str(err.value)
    assert 'loss.weighting: saved "g2_is", given "sigma2"; optim.lr: saved 0.002, given 0.5.' in msg
    assert "num_steps: saved" not in msg
    may_change = msg.split(" Only ")[1].split(" may change")[0].split(", ")
    assert set(may_change) == {"name", "distributed.*", "train.num_steps", "train.log_every", "train.ckpt_every",
                               "train.keep", "train.progress", "train.init_from", "data.data_dir"}

    def check(c):
        _check_resume_config(c, str(workdir / "config.json"), 15, str(workdir / "checkpoints"))

    free = {"name": lambda c: dataclasses.replace(c, name="renamed"),
            "distributed.*": lambda c: apply_overrides(c, ["distributed.enabled=true", "distributed.num_processes=2",
                                                           "distributed.process_id=1"])}
    for key in may_change:
        check(free[key](cfg) if key in free else apply_overrides(cfg, [f"{key}={'true' if key == 'train.progress' else 7}"]))
    for key, value in (("train.seed", "3"), ("train.batch_size", "16"), ("model.width", "17"), ("data.mixture", "lu_mog_1d"),
                       ("sde.beta_max", "19"), ("optim.ema_rate", "0.9")):
        with pytest.raises(ValueError, match=rf"{key.replace('.', r'[.]')}: saved "):
            check(apply_overrides(cfg, [f"{key}={value}"]))


def test_resume_needs_the_runs_config_json_and_rewrites_it_atomically(tiny_run, tmp_path, monkeypatch):
    """A work directory with checkpoints but without a readable config.json is not resumed (its config
    could not be checked); the error names the file and the fix. A failed rewrite of config.json (here
    a full disk at its fsync) leaves the previous file."""
    cfg, _ = tiny_run
    workdir = _copy_run(tiny_run, tmp_path / "run")
    cfg_path = workdir / "config.json"
    original = cfg_path.read_text()
    cfg_path.unlink()
    with pytest.raises(FileNotFoundError, match=rf"latest step 15\) but {cfg_path} is missing.*restore it"):
        train(cfg, workdir, resume=True)
    for damaged in ("", original[: len(original) // 2]):
        cfg_path.write_text(damaged)
        with pytest.raises(ValueError, match=rf"{cfg_path} cannot be read as JSON.*restore it from a copy"):
            train(cfg, workdir, resume=True)
    cfg_path.write_text(original)
    changed = apply_overrides(cfg, ["train.log_every=5"])

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space left") as err:
            train(changed, workdir, resume=True, log=lambda *a: None)
    assert any(entry.name == "write_atomic" for entry in err.traceback)  # failed while writing config.json
    assert cfg_path.read_text() == original
    # no temporary file left (.train.lock: the work directory's lock, training.train._workdir_lock)
    assert sorted(os.listdir(workdir)) == [".train.lock", "checkpoints", "config.json", "data.json", "metrics.jsonl"]
    train(changed, workdir, resume=True, log=lambda *a: None)
    assert json.loads(cfg_path.read_text())["train"]["log_every"] == 5


def test_resume_drops_a_cut_off_metrics_line_and_records_the_loss_window(tiny_run, tmp_path):
    """metrics.jsonl after a run killed past its last checkpoint (a record of step 30 the checkpoint at
    15 does not cover) and then by a full disk mid-line: the resume drops both and goes on; each
    record says how many steps its loss_window_mean averages (the run's end at 15 logged 11-15; after
    the resume from step 15, 16-20)."""
    cfg, _ = tiny_run
    workdir = _copy_run(tiny_run, tmp_path / "run")
    metrics = workdir / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 30, "loss": 1.0}\n{"step": 50, "loss": 1.2')
    train(apply_overrides(cfg, ["train.num_steps=20"]), workdir, resume=True, log=lambda *a: None)
    from training.metrics import read_metrics

    recs = read_metrics(metrics)
    assert [(r["step"], r["loss_window_n"]) for r in recs] == [(10, 10), (15, 5), (20, 5)]
    assert metrics.read_text().endswith("}\n")


def test_metrics_reader_drops_only_a_cut_off_last_line(tmp_path):
    from training.metrics import MetricsWriter, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "loss": 1.5}\n{"step": 20, "loss": 1.4}\n{"step": 30, "loss": 1.2')
    assert [r["step"] for r in read_metrics(path)] == [10, 20]
    MetricsWriter(path).write({"step": 30, "loss": 1.1})
    assert read_metrics(path) == [{"step": 10, "loss": 1.5}, {"step": 20, "loss": 1.4}, {"step": 30, "loss": 1.1}]
    path.write_text('{"step": 10, "loss": 1.5}\n{"step": 20, "lo\n{"step": 30, "loss": 1.2}\n')
    for read in (lambda: read_metrics(path), lambda: MetricsWriter(path, truncate_after=10)):
        with pytest.raises(ValueError, match=rf"{path}, line 2: not a JSON record .*delete that line"):
            read()


def test_metrics_writer_rewrites_atomically_and_only_records_past_the_resume(tmp_path, monkeypatch):
    from training.metrics import MetricsWriter, read_metrics

    path = tmp_path / "metrics.jsonl"
    text = "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (10, 20, 30))
    path.write_text(text)
    inode = os.stat(path).st_ino
    MetricsWriter(path, truncate_after=30)
    assert os.stat(path).st_ino == inode and path.read_text() == text  # nothing past step 30: left alone

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space left"):
            MetricsWriter(path, truncate_after=15)
    assert path.read_text() == text and os.listdir(tmp_path) == ["metrics.jsonl"]
    MetricsWriter(path, truncate_after=15)
    assert [r["step"] for r in read_metrics(path)] == [10]


# --- SIGTERM and the work directory's lock --------------------------------------------------------------


def test_sigterm_stops_the_loop_after_that_step_and_saves_it(tiny_run, tmp_path, monkeypatch):
    """A real SIGTERM to this process while step 18 of a resumed run is prepared (``train.ckpt_every``
    15, so no periodic save is due): the loop finishes that step, saves checkpoint 18, stops, and a
    resume goes on from there. With one process, training.train._any_process is the local flag
    itself: it gathers nothing across processes (a call to the collective would raise here)."""
    import signal
    import threading

    from jax.experimental import multihost_utils

    from training import sharding
    from training.train import _any_process

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed in the main thread")
    cfg, _ = tiny_run
    workdir = _copy_run(tiny_run, tmp_path / "run")
    real, calls = sharding.host_to_global, []

    def host_to_global(local, mesh, global_batch):
        calls.append(len(calls))
        if len(calls) == 3:  # steps 16, 17, 18 after the resume from 15: the batch of step 18
            os.kill(os.getpid(), signal.SIGTERM)
        return real(local, mesh, global_batch)

    def no_collective(*args, **kwargs):
        raise AssertionError("a one-process run must not gather across processes")

    logs = []
    with monkeypatch.context() as m:
        m.setattr(sharding, "host_to_global", host_to_global)
        m.setattr(multihost_utils, "process_allgather", no_collective)
        result = train(apply_overrides(cfg, ["train.num_steps=40"]), workdir, resume=True, log=logs.append)
        assert (_any_process(True), _any_process(False)) == (True, False)
    assert result.stopped_by_signal and result.last_checkpoint == 18 and int(result.state.step) == 18
    assert logs[-1].startswith("SIGTERM: saved checkpoint at step 18")
    assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == [15, 18]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the loop's handler is gone again
    result = train(apply_overrides(cfg, ["train.num_steps=20"]), workdir, resume=True, log=logs.append)
    assert not result.stopped_by_signal and int(result.state.step) == 20


def _hold_lock(path, holder: str):
    """Take ``path``'s flock as another process would (an open file of its own) and record ``holder``."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.write(fd, holder.encode())
    return fd


_HOLD_LOCK_SCRIPT = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
os.ftruncate(fd, 0)
os.write(fd, f"pid {os.getpid()} on host here: training".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_trainer_in_a_work_directory_is_refused_until_the_first_ends(tiny_run, tmp_path, capsys):
    """While another process holds ``<workdir>/.train.lock``, train() and ``python -m training train``
    refuse the work directory, naming it and the holder, before writing anything there; once the
    holder ends, even by SIGKILL (the operating system drops its lock), a run proceeds."""
    import subprocess
    import sys

    pytest.importorskip("fcntl")
    from training.__main__ import main
    from training.fileio import DirectoryBusyError

    cfg, _ = tiny_run
    workdir, fresh = _copy_run(tiny_run, tmp_path / "run"), tmp_path / "fresh"
    fresh.mkdir()
    busy = r" is in use by another process \(pid 4242 on host elsewhere: training; lock file .*\.train\.lock\); wait"
    fds = [_hold_lock(d / ".train.lock", "pid 4242 on host elsewhere: training") for d in (workdir, fresh)]
    try:
        with pytest.raises(DirectoryBusyError, match=re.escape(str(workdir)) + busy + ".*--resume"):
            train(cfg, workdir, resume=True, log=lambda *a: None)
        with pytest.raises(DirectoryBusyError, match=re.escape(str(fresh)) + busy):
            train(cfg, fresh, log=lambda *a: None)
        assert main(["train", "--config", "mixture2d", "--workdir", str(fresh), *TINY]) == 2
        assert "pid 4242 on host elsewhere: training" in capsys.readouterr().err
        assert os.listdir(fresh) == [".train.lock"]  # neither checkpoints nor config.json were written
    finally:
        for fd in fds:
            os.close(fd)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK_SCRIPT, str(workdir / ".train.lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryBusyError, match=rf"pid {holder.pid} on host here: training"):
            train(cfg, workdir, resume=True, log=lambda *a: None)
    finally:
        holder.kill()
        holder.wait()
    result = train(cfg, workdir, resume=True, log=lambda *a: None)
    assert int(result.state.step) == 15
    assert (workdir / ".train.lock").read_text().startswith(f"pid {os.getpid()} on host ")


# --- data --------------------------------------------------------------------------------------


def _write_cifar(root, n_per_batch=6, shape=(3, 32, 32), seed=0, as_tar=True):
    """Write a synthetic archive in the official python format (pickled dicts with bytes keys)."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    truth = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        imgs = rng.integers(0, 256, size=(n_per_batch, *shape), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n_per_batch).tolist()
        d = {b"batch_label": name.encode(), b"labels": labels, b"data": imgs.reshape(n_per_batch, -1),
             b"filenames": [f"img{i}.png".encode() for i in range(n_per_batch)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(d, f, protocol=2)
        truth[name] = (imgs, np.asarray(labels))
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [b"airplane"] * 10, b"num_vis": 3072}, f, protocol=2)
    if as_tar:
        tar_path = os.path.join(root, "cifar-10-python.tar.gz")
        with tarfile.open(tar_path, "w:gz") as tar:
            tar.add(folder, arcname="cifar-10-batches-py")
    return truth


@pytest.mark.parametrize("form", ["tar", "tar_file", "folder"])
def test_cifar10_reader_official_format(tmp_path, form):
    truth = _write_cifar(tmp_path)
    if form == "folder":
        import shutil

        os.remove(os.path.join(tmp_path, "cifar-10-python.tar.gz"))
        path = os.path.join(tmp_path, "cifar-10-batches-py")
    elif form == "tar_file":
        import shutil

        shutil.rmtree(os.path.join(tmp_path, "cifar-10-batches-py"))
        path = os.path.join(tmp_path, "cifar-10-python.tar.gz")
    else:
        import shutil

        shutil.rmtree(os.path.join(tmp_path, "cifar-10-batches-py"))
        path = str(tmp_path)
    train_ds = tdata.load_cifar10(path, "train")
    test_ds = tdata.load_cifar10(path, "test")
    want = np.concatenate([truth[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(train_ds.images, want)
    np.testing.assert_array_equal(train_ds.labels, np.concatenate([truth[f"data_batch_{i}"][1] for i in range(1, 6)]))
    np.testing.assert_array_equal(test_ds.images, truth["test_batch"][0])
    assert train_ds.images.shape == (30, 3, 32, 32) and train_ds.images.dtype == np.uint8
    # channel planes: the first 1024 bytes of a row are the red plane
    raw_row = truth["data_batch_1"][0][0].reshape(-1)
    np.testing.assert_array_equal(train_ds.images[0, 0].reshape(-1), raw_row[:1024])


def test_cifar10_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tdata.load_cifar10(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 train batches"):
        tdata.load_cifar10(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    _write_cifar(bad, shape=(3, 16, 16), as_tar=False)
    with pytest.raises(ValueError, match=r"expected data of shape \(N, 3072\)"):
        tdata.load_cifar10(bad)
    evil = tmp_path / "evil" / "cifar-10-batches-py"
    evil.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)]:
        with open(evil / name, "wb") as f:
            pickle.dump({b"data": os.system}, f)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        tdata.load_cifar10(evil.parent)


def test_cut_off_cifar10_archive_is_a_clear_error(tmp_path, capsys):
    """An archive cut in half (a download that stopped) still passes tarfile.is_tarfile; reading it
    must fail with a ValueError naming it and the fix, also through the training command line."""
    from training.__main__ import main

    _write_cifar(tmp_path)
    shutil.rmtree(tmp_path / "cifar-10-batches-py")
    archive = tmp_path / "cifar-10-python.tar.gz"
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    assert tarfile.is_tarfile(archive)
    message = rf"archive '{archive}' \(--data-dir\) is damaged or incomplete \(EOFError: .*\); re-download"
    for split in ("train", "test"):
        with pytest.raises(ValueError, match=message):
            tdata.load_cifar10(tmp_path, split)
    rc = main(["train", "--config", "cifar10_vp_ddpmpp_g2_is", "--workdir", str(tmp_path / "w"), "--data-dir", str(archive),
               "train.progress=false"])
    assert rc == 2
    assert "re-download cifar-10-python.tar.gz" in capsys.readouterr().err


def test_cifar_config_without_data_dir_is_a_clear_error(tmp_path):
    cfg = get_config("cifar10_vp_ddpmpp_g2_is", ["train.progress=false"])
    with pytest.raises(ValueError, match="--data-dir"):
        train(cfg, tmp_path)
    cfg = apply_overrides(cfg, [f"data.data_dir={tmp_path / 'missing'}"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(cfg, tmp_path)


def test_digits_presets_train_on_1500_and_hold_out_297(without_jaxtyping):
    """load_digits' "train" and "test" splits partition the 1797 digits (the last 297 held out, every class
    present in both); the digits stream of a preset (data.split = "train") only ever indexes training images,
    and eval's default test set is the held-out split."""
    from training.configs import get_config
    from training.eval_run import load_test_set

    every, tr, te = (tdata.load_digits(s) for s in ("all", "train", "test"))
    assert len(tr) == 1500 and len(te) == tdata.DIGITS_TEST_SIZE == 297
    np.testing.assert_array_equal(np.concatenate([tr.images, te.images]), every.images)
    np.testing.assert_array_equal(np.concatenate([tr.labels, te.labels]), every.labels)
    assert np.bincount(te.labels).min() >= 25 and np.bincount(tr.labels).min() >= 140
    cfg = get_config("digits")
    stream = tdata.make_stream(cfg.data, 128, seed=0)
    assert len(stream.dataset) == 1500
    np.testing.assert_array_equal(stream.dataset.images, tr.images)
    test = load_test_set(cfg)
    np.testing.assert_array_equal(test.examples, te.images)
    assert test.info["split"] == "test" and test.info["held_out"] and test.tag == "digits-test"
    np.testing.assert_array_equal(load_test_set(cfg, split="train").examples, tr.images)
    assert not load_test_set(cfg, split="train").info["held_out"]
    # a model trained on the test digits: they are not held out from it, the training digits are
    on_test = get_config("digits", ["data.split=test"])
    assert not load_test_set(on_test).info["held_out"] and load_test_set(on_test, split="train").info["held_out"]
    with pytest.raises(ValueError, match="split must be 'train', 'test' or 'all'"):
        tdata.load_digits("valid")


def test_digits_quantisation_and_dequantisation():
    ds = tdata.load_digits()
    assert ds.images.shape == (1797, 1, 8, 8) and ds.images.dtype == np.uint8
    assert np.bincount(ds.labels).tolist()[:3] == [178, 182, 177]
    np.testing.assert_array_equal(tdata.quantise_digits(np.arange(17)), np.floor(np.arange(17) * 255 / 16 + 0.5))
    assert tdata.quantise_digits(np.array([0, 8, 16])).tolist() == [0, 128, 255]
    assert set(np.unique(ds.images)) <= set(tdata.quantise_digits(np.arange(17)).tolist())
    # dequantized x = 2(k + u)/256 − 1: E[x | k] = 2(k + ½)/256 − 1, range [−1, 1)
    k = jnp.asarray(np.array([[0, 128, 255]] * 20000, np.uint8))
    x = np.asarray(tdata.dequantize(k, jax.random.PRNGKey(0)), np.float64)
    assert x.dtype == np.float64 and tdata.dequantize(k, jax.random.PRNGKey(0)).dtype == F32
    assert x.min() >= -1.0 and x.max() < 1.0
    se = (2 / 256) * np.sqrt(1 / 12) / np.sqrt(x.shape[0])
    np.testing.assert_allclose(x.mean(0), 2 * (np.array([0, 128, 255]) + 0.5) / 256 - 1, atol=4 * se)
    with pytest.raises(ValueError, match="0..16"):
        tdata.quantise_digits(np.array([17]))


def test_image_stream_order_is_deterministic_and_host_sharded():
    ds = tdata.ImageDataset(np.arange(40, dtype=np.uint8).reshape(10, 1, 2, 2),
                            np.arange(10, dtype=np.int64))
    s = tdata.ImageStream(ds, 4, seed=3)
    # one pass of 10 examples covers each once per epoch; steps 0..4 span two epochs
    idx = np.concatenate([s.global_indices(i) for i in range(5)])
    assert sorted(idx[:10].tolist()) == list(range(10)) and sorted(idx[10:20].tolist()) == list(range(10))
    np.testing.assert_array_equal(s.global_indices(3), tdata.ImageStream(ds, 4, seed=3).global_indices(3))
    assert not np.array_equal(idx[:10], np.concatenate([tdata.ImageStream(ds, 4, seed=4).global_indices(i) for i in range(3)])[:10])
    hosts = [tdata.ImageStream(ds, 4, seed=3, process_index=p, process_count=2) for p in range(2)]
    for step in range(4):
        np.testing.assert_array_equal(np.concatenate([h.host_batch(step) for h in hosts]), ds.images[s.global_indices(step)])
    with pytest.raises(ValueError, match="divisible"):
        tdata.ImageStream(ds, 3, seed=0, process_count=2)


# --- networks ------------------------------------------------------------------------------------


def test_ddpmpp_forward_backward_on_cifar_shaped_batch():
    """One DDPM++ forward/backward step (the training loss of numerics) on a CIFAR-shaped batch at
    reduced size: nf=16, ch_mult (1, 2), one block per resolution, attention at 16×16."""
    from training.networks.ddpmpp import AttnBlock
    from training.train import make_loss_fn

    cfg = get_config("cifar10_vp_ddpmpp_g2_is", ["model.nf=16", "model.num_res_blocks=1", "model.ch_mult=1,2"])
    make = eqx.filter_jit(lambda k: DDPMpp((3, 32, 32), nf=16, ch_mult=(1, 2), num_res_blocks=1,
                                           attn_resolutions=(16,), dropout=0.1, key=k))
    model = make(jax.random.key(0, impl="unsafe_rbg"))  # rbg compiles faster than threefry on CPU
    # attention only at 16×16 (one down, one up) besides the middle block
    assert sum(isinstance(b, AttnBlock) for b in model.down) == 1
    assert sum(isinstance(b, AttnBlock) for b in model.up) == 1
    params, static = eqx.partition(model, eqx.is_inexact_array)
    loss_fn = make_loss_fn(static, cfg)

    def step(params, x, key):
        (loss, (terms, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, key)
        out = jax.vmap(eqx.combine(params, static))(x, jnp.full((x.shape[0],), 0.3, F32))
        return loss, terms, grads, out

    x = jax.random.uniform(jax.random.PRNGKey(1), (2, 3, 32, 32), F32, -1, 1)
    key = jax.random.PRNGKey(2)
    # XLA's -O0 halves the CPU compile time of this one-off step
    compiled = jax.jit(step).lower(params, x, key).compile({"xla_backend_optimization_level": 0})
    loss, terms, grads, out = compiled(params, x, key)
    assert loss.dtype == F32 and terms.shape == (2,) and np.isfinite(float(loss))
    assert out.shape == x.shape and float(jnp.max(jnp.abs(out))) == 0.0  # ε̂ ≡ 0 at initialisation
    gnorms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(gnorms)) and float(jnp.linalg.norm(grads.conv_out.weight)) > 0
    with pytest.raises(ValueError, match=r"built for images of shape"):
        jax.eval_shape(model, jax.ShapeDtypeStruct((3, 28, 28), F32), jax.ShapeDtypeStruct((), F32))


@pytest.mark.parametrize("k", [1, 3])
def test_channels_last_conv_equals_equinox_conv(k):
    """DDPM++'s convolutions run channels-last (fast inside diffrax's while loop on XLA:CPU) with the
    parameters and results of eqx.nn.Conv2d."""
    from training.networks.ddpmpp import ChannelsLastConv2d

    ours = ChannelsLastConv2d(4, 6, k, padding=k // 2, dtype=F32, key=jax.random.PRNGKey(0))
    ref = eqx.nn.Conv2d(4, 6, k, padding=k // 2, dtype=F32, key=jax.random.PRNGKey(0))
    ours = eqx.tree_at(lambda m: m.bias, ours, jax.random.normal(jax.random.PRNGKey(3), ours.bias.shape, F32))
    ref = eqx.tree_at(lambda m: m.bias, ref, ours.bias)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 9, 9), F32)
    np.testing.assert_allclose(np.asarray(jax.vmap(ours)(x)), np.asarray(jax.vmap(ref)(x)), rtol=1e-5, atol=1e-5)


def test_ddpmpp_full_size_parameter_counts():
    """Full DDPM++ cont. sizes (abstract evaluation, nothing allocated): 61.8M (4 blocks), 106.6M (deep)."""
    base = eqx.filter_eval_shape(lambda k: DDPMpp(num_res_blocks=4, key=k), jax.random.PRNGKey(0))
    deep = eqx.filter_eval_shape(lambda k: DDPMpp(num_res_blocks=8, key=k), jax.random.PRNGKey(0))
    assert count_params(base) == pytest.approx(61.8e6, rel=0.01)
    assert count_params(deep) == pytest.approx(106.6e6, rel=0.01)


def test_mlp_is_zero_at_init_and_flattens_images():
    out = jax.jit(lambda k: MLPScoreNet(2, 16, 1, 8, key=k)(jnp.ones(2, F32), jnp.asarray(0.3, F32)))(
        jax.random.PRNGKey(0))
    assert float(jnp.abs(out).max()) == 0.0
    from training.train import build_model

    net = build_model(PRESETS["mixture2d"].model, (1, 8, 8), jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 8, 8), F32)
    net = eqx.tree_at(lambda n: n.mlp.out.bias, net, jnp.arange(64, dtype=F32))  # a non-zero output layer
    y = net(x, jnp.asarray(0.3, F32))
    np.testing.assert_array_equal(np.asarray(y), np.asarray(net.mlp(x.reshape(-1), jnp.asarray(0.3, F32)).reshape(1, 8, 8)))


# --- configs ---------------------------------------------------------------------------------------


def test_presets_cover_table2_with_published_hyperparameters():
    rows = [n for n in PRESETS if n.startswith("cifar10_") and PRESETS[n].loss.objective == "dsm"]
    assert len(rows) == 12
    for sde in ("vp", "subvp"):
        for deep in ("", "_deep"):
            for w in ("sigma2", "g2", "g2_is"):
                c = PRESETS[f"cifar10_{sde}_ddpmpp{deep}_{w}"]
                assert c.loss.weighting == w and c.sde.name == sde
                assert (c.train.batch_size, c.optim.lr, c.optim.warmup, c.optim.grad_clip, c.optim.ema_rate) == (
                    128, 2e-4, 5000, 1.0, 0.9999)
                assert c.train.num_steps == (950_000 if deep else 1_300_000)
                m = c.model
                assert (m.nf, m.ch_mult, m.attn_resolutions, m.dropout) == (128, (1, 2, 2, 2), (16,), 0.1)
                assert m.num_res_blocks == (8 if deep else 4)
                assert c.data.centered and c.sde.t_min == (1e-5 if sde == "vp" else 1e-2)
    # Lu et al.'s fine-tuning presets (THEORY.md §3.7) and VDM's (§4.8)
    for order, batch in ((2, 128), (3, 48)):
        c = PRESETS[f"cifar10_vp_ddpmpp_deep_g2_is_{'second' if order == 2 else 'third'}"]
        assert (c.loss.objective, c.loss.order, c.loss.order_weights, c.loss.estimator) == (
            "high_order", order, (1.0, 1.0, 1.0), "hutchinson")
        assert c.train.batch_size == batch and c.model == PRESETS["cifar10_vp_ddpmpp_deep_g2_is"].model
    v = PRESETS["cifar10_vdm"]
    assert (v.sde.name, v.sde.schedule, v.sde.gamma_min, v.sde.gamma_max, v.loss.objective) == (
        "vdm", "learned", -13.3, 5.0, "vdm")
    assert (v.model.ch_mult, v.model.num_res_blocks, v.model.nf, v.model.input_fourier) == ((1,), 32, 128, (6, 7))
    assert (v.optim.weight_decay, v.optim.beta2, v.optim.lr, v.optim.ema_rate, v.train.batch_size) == (
        0.01, 0.99, 2e-4, 0.9999, 128)


def test_overrides_parse_types_and_reject_unknown_keys():
    c = get_config("digits", ["train.batch_size=32", "model.ch_mult=1,2,2", "optim.lr=1e-3", "data.centered=false",
                              "sde.t_min=none", "loss.weighting=g2"])
    assert c.train.batch_size == 32 and c.model.ch_mult == (1, 2, 2) and c.optim.lr == 1e-3
    assert c.data.centered is False and c.sde.t_min is None and c.loss.weighting == "g2"
    with pytest.raises(ValueError, match=r"unknown config key 'train.batchsize'.*train.batch_size"):
        get_config("digits", ["train.batchsize=32"])
    with pytest.raises(ValueError, match="expects an integer"):
        get_config("digits", ["train.batch_size=lots"])
    with pytest.raises(ValueError, match="must be one of"):
        get_config("digits", ["loss.weighting=uniform"])
    with pytest.raises(ValueError, match="unknown config 'cifar'"):
        get_config("cifar")
    with pytest.raises(ValueError, match="key=value"):
        get_config("digits", ["train.batch_size"])


def test_ema_warmup_weights_the_initialisation_as_its_closed_form():
    """optim.ema_warmup: with d_k = min(rate, (1+k)/(10+k)) the initial parameters keep Π_{k<n} d_k of the
    EMA after n steps, which is 1/C(n+9, 9) while the rate does not bind (without warm-up: rate**n).
    A constant stream of parameters (0 → 1) reads that weight off; and one real training step under the
    option gives EMA = 0.1·initial + 0.9·updated parameters (d_0 = 1/10)."""
    import math

    from training.data import make_stream
    from training.train import ema_update, init_state, make_train_step

    # float64 leaves: 1 − EMA is read to 1e-7 relative (the rate itself is computed in float32)
    ema, ones = {"w": jnp.zeros(3, jnp.float64)}, {"w": jnp.ones(3, jnp.float64)}
    for n in range(1, 15):
        ema = ema_update(ema, ones, jnp.asarray(n - 1, jnp.int32), 0.9999, True)
        np.testing.assert_allclose(1.0 - np.asarray(ema["w"]), 1.0 / math.comb(n + 9, 9), rtol=2e-5, atol=1e-7)
    ema = {"w": jnp.zeros(3, jnp.float64)}
    for n in range(1, 13):  # rate 0.5 binds from k = 8 on: (1+k)/(10+k) >= 0.5
        ema = ema_update(ema, ones, jnp.asarray(n - 1, jnp.int32), 0.5, True)
    expected = math.prod((1 + k) / (10 + k) for k in range(8)) * 0.5 ** 4
    np.testing.assert_allclose(1.0 - np.asarray(ema["w"]), expected, rtol=1e-4)
    plain = ema_update({"w": jnp.zeros(3)}, ones, jnp.asarray(0, jnp.int32), 0.99, False)
    np.testing.assert_allclose(np.asarray(plain["w"]), 0.01, rtol=1e-6)

    cfg = get_config("mixture2d", TINY + ["optim.ema_warmup=true", "optim.ema_rate=0.999", "optim.warmup=0"])
    assert cfg.optim.ema_warmup is True and get_config("mixture2d", TINY).optim.ema_warmup is False
    stream = make_stream(cfg.data, cfg.train.batch_size, cfg.train.seed)
    state, static, tx, schedule = init_state(cfg, stream.event_shape)
    step = jax.jit(make_train_step(static, stream, tx, schedule, cfg))
    new, _ = step(state, stream.host_batch(0), jax.random.key(0))
    for e, p0, p1 in zip(*map(jax.tree.leaves, (new.ema, state.params, new.params)), strict=True):
        np.testing.assert_allclose(np.asarray(e), 0.1 * np.asarray(p0) + 0.9 * np.asarray(p1), rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(*map(jax.tree.leaves, (new.params, state.params))))


def test_lock_directory_is_reentrant_within_a_thread_only(tmp_path):
    """training.fileio.lock_directory: a nested lock of the same file in the same thread passes (a save
    inside a locked run); another thread of the process is refused while it is held, naming itself as
    such and the holder; once released, that thread takes it."""
    import threading

    from training.fileio import DirectoryBusyError, lock_directory

    outcomes = []

    def other_thread():
        try:
            with lock_directory(tmp_path, ".x.lock", what="second", fix="wait for it."):
                outcomes.append("taken")
        except DirectoryBusyError as e:
            outcomes.append(str(e))

    def in_thread():
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()

    with lock_directory(tmp_path, ".x.lock", what="first", fix="wait for it.") as p:
        with lock_directory(tmp_path, ".x.lock", what="nested", fix="wait for it.") as q:
            assert p == q == str(tmp_path / ".x.lock")
        in_thread()
    in_thread()
    assert outcomes[1] == "taken"
    assert outcomes[0].startswith(f"{tmp_path} is in use by another thread of this process (pid {os.getpid()} on host")
    assert ": first; lock file" in outcomes[0] and outcomes[0].endswith("wait for it.")
