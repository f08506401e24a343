"""Bad input and failure modes of training/: clear errors that name the argument, and nothing lost.

1. Checkpoint readers are read-only: they neither create the checkpoint directory nor remove a live
   trainer's unfinished ``<step>.orbax-checkpoint-tmp*`` folder (which a writer's start-up does remove).
2. A step whose update makes the state non-finite is never saved: the error names the last
   checkpoint, and that checkpoint loads finite.
3. ``training.configs.validate``: each out-of-range value raises a ValueError naming the key;
   ``train()`` validates configs built without overrides; the dequantiser's command line checks its
   flags.
4. The ε-offset bound rejects NaN samples with ode_nll's message; the bits/dim evaluations and
   ``training.data.dequantize`` reject dequantised floats.
5. The dequantiser's training checks finiteness before every checkpoint, not only when it logs.
6. Every config.json is read by training.fileio.read_json: a damaged one gives the same message
   (file, cause, fix) in train, eval, sample and dequant.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numerics
from training import data as tdata
from training import evaluate as ev
from training.checkpoint import Checkpointer
from training.configs import PRESETS, get_config, list_configs, validate
from training.train import NonFiniteLossError, init_state, load_state, train

F32 = jnp.float32
TINY = ["model.width=16", "model.depth=1", "train.batch_size=8", "train.progress=false", "train.log_every=1000"]


# --- 1. read-only checkpoint readers ----------------------------------------------------------------


def _tmp_folder(ck_dir, step: int):
    """A hand-made unfinished checkpoint as orbax names it while a save is in flight."""
    tmp = ck_dir / f"{step}.orbax-checkpoint-tmp-1234567890"
    tmp.mkdir(parents=True)
    (tmp / "in_flight").write_text("a trainer is writing this")
    return tmp


def test_readers_leave_a_live_trainers_temporary_checkpoint_alone(tmp_path):
    """evaluate.checkpoint_steps, train.load_state and evaluate.load_model open the checkpoints
    read-only: a temporary folder next to a finished checkpoint survives all three, and reading a
    work directory without checkpoints creates nothing. Positive control: opening the directory for
    writing (what train() does at its start) does remove the temporary folder."""
    import json

    from training.configs import config_to_dict

    cfg = get_config("mixture2d", TINY)
    state, _, _, _ = init_state(cfg, (2,))
    ck = Checkpointer(tmp_path / "checkpoints", write=True, every=1)
    ck.save(1, state, force=True)
    ck.close()
    (tmp_path / "config.json").write_text(json.dumps(config_to_dict(cfg)))
    tmp = _tmp_folder(tmp_path / "checkpoints", 2)

    assert ev.checkpoint_steps(tmp_path) == [1]
    restored, _ = load_state(cfg, tmp_path)
    _, _, _, step = ev.load_model(tmp_path)
    assert step == 1 and int(restored.step) == 0
    for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert (tmp / "in_flight").read_text() == "a trainer is writing this"

    # no checkpoint directory: readers report none and create none
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ev.checkpoint_steps(empty) == []
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_state(cfg, empty)
    assert not (empty / "checkpoints").exists()
    # a reader cannot save
    reader = Checkpointer(tmp_path / "checkpoints")
    with pytest.raises(PermissionError, match="read-only.*write=True"):
        reader.save(3, state, force=True)
    reader.close()

    # positive control: a writer (train() at its start) cleans the temporary folder up (in the
    # background; its first save waits for that) and saves as before
    writer = Checkpointer(tmp_path / "checkpoints", write=True, every=1)
    assert writer.save(3, state, force=True)
    writer.close()
    assert not tmp.exists()
    assert ev.checkpoint_steps(tmp_path) == [1, 3]


def test_a_reader_opens_without_orbax_read_only_notice_and_leaves_logging_as_it_was(tmp_path):
    """orbax warns "Given directory is read only" when a read-only manager opens: for a reader that is
    the intended mode. The filter that drops it is on the absl logger only while a reader opens, so
    nothing else anyone logs is filtered (it used to be installed process-wide at import)."""
    import logging

    absl = logging.getLogger("absl")
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    handler, level = Keep(), absl.level
    absl.addHandler(handler)
    absl.setLevel(logging.INFO)
    try:
        w = Checkpointer(tmp_path, write=True, every=1)
        w.save(1, {"a": jnp.ones(3)}, force=True)
        w.close()
        filters = list(absl.filters)
        r = Checkpointer(tmp_path)
        assert r.all_steps() == [1]
        r.close()
        assert absl.filters == filters
        assert not [m for m in seen if "is read only" in m], seen
        absl.warning("Given directory is read only=elsewhere (logged by someone else)")
        assert seen[-1].startswith("Given directory is read only=elsewhere")
    finally:
        absl.removeHandler(handler)
        absl.setLevel(level)


def test_checkpoint_steps_while_a_run_saves(tmp_path):
    """The reviewer's failure: another process listing the checkpoints while a trainer saves removed
    the trainer's temporary folder (FileNotFoundError at its first checkpoint). A run with a
    checkpoint every step, with checkpoint_steps called from a thread throughout, completes and keeps
    its checkpoints (with the old read-write readers the same run crashed, in three of three tries)."""
    import threading
    import time

    cfg = get_config("mixture2d", TINY + ["train.num_steps=6", "train.ckpt_every=1", "train.keep=10"])
    stop = threading.Event()
    seen: list[list[int]] = []
    errors: list[BaseException] = []

    def poll():
        while not stop.is_set():
            if (tmp_path / "checkpoints").is_dir():
                try:
                    seen.append(ev.checkpoint_steps(tmp_path))
                except BaseException as e:  # noqa: BLE001 — reported below
                    errors.append(e)
            time.sleep(0.001)

    t = threading.Thread(target=poll)
    t.start()
    try:
        train(cfg, tmp_path, log=lambda *a: None)
    finally:
        stop.set()
        t.join()
    assert ev.checkpoint_steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert not errors, errors[:3]
    assert seen and all(s == sorted(s) and set(s) <= set(range(1, 7)) for s in seen)


# --- 2. a non-finite update is never saved -----------------------------------------------------------


def test_a_non_finite_update_is_not_saved_and_the_named_checkpoint_loads_finite(tmp_path, monkeypatch):
    """The update of step 2 (0-based) is forced to NaN parameters while its loss and gradient are
    finite — before the fix, the NaN state was saved as checkpoint 3 and the error called it "the
    last good checkpoint". Now: the error names checkpoint 2, checkpoint 3 does not exist, and
    checkpoint 2 loads with finite parameters, EMA and optimiser state at step 2."""
    import training.train as tt

    real = tt.make_train_step

    def poisoned(*args, **kwargs):
        step = real(*args, **kwargs)

        def wrapped(state, raw, base_key):
            new, metrics = step(state, raw, base_key)
            bad = state.step == 2
            params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new.params)
            new = tt.TrainState(new.step, params, new.ema, new.opt_state)
            metrics = {**metrics, "state_finite": tt.all_finite((new.params, new.ema, new.opt_state))}
            return new, metrics

        return wrapped

    monkeypatch.setattr(tt, "make_train_step", poisoned)
    cfg = get_config("mixture2d", TINY + ["train.num_steps=10", "train.ckpt_every=1", "train.keep=10"])
    with pytest.raises(NonFiniteLossError, match=r"update of step 2 made the parameters.*not saved.*"
                                                 r"last good checkpoint \(step 2\) is intact"):
        train(cfg, tmp_path, log=lambda *a: None)
    assert ev.checkpoint_steps(tmp_path) == [1, 2]
    restored, _ = load_state(cfg, tmp_path)
    assert int(restored.step) == 2
    assert all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves((restored.params, restored.ema,
                                                                             restored.opt_state)))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_a_learning_rate_that_overflows_float32_stops_before_any_checkpoint(tmp_path):
    """optim.lr = 1e39 is a finite number (it passes validate) but infinite in the float32 schedule:
    the first update makes the parameters non-finite while step 0's loss is finite. With a checkpoint
    due after every step, nothing is saved and the error says so."""
    cfg = get_config("mixture2d", TINY + ["train.num_steps=5", "train.ckpt_every=1", "optim.lr=1e39",
                                          "optim.warmup=0"])
    with pytest.raises(NonFiniteLossError, match=r"update of step 0 made the parameters.*no checkpoint was written"):
        train(cfg, tmp_path, log=lambda *a: None)
    assert ev.checkpoint_steps(tmp_path) == []


# --- 3. config validation ----------------------------------------------------------------------------


def test_every_preset_is_valid():
    for name in list_configs():
        assert validate(PRESETS[name]) is PRESETS[name]


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", r"train.batch_size must be an integer >= 1 \(got 0\)"),
    ("train.num_steps=-5", r"train.num_steps must be an integer >= 1 \(got -5\)"),
    ("train.num_steps=0", r"train.num_steps must be an integer >= 1 \(got 0\)"),
    ("train.log_every=0", r"train.log_every must be an integer >= 1 \(got 0\)"),
    ("train.ckpt_every=0", r"train.ckpt_every must be an integer >= 1 \(got 0\)"),
    ("train.keep=0", r"train.keep must be an integer >= 1 \(got 0\): .*train.keep=1 or more"),
    ("train.keep=-1", r"train.keep must be an integer >= 1 \(got -1\)"),
    ("train.seed=-1", r"train.seed must be an integer >= 0 \(got -1\)"),
    ("optim.lr=nan", r"optim.lr must be a finite number > 0 \(got nan\)"),
    ("optim.lr=inf", r"optim.lr must be a finite number > 0 \(got inf\)"),
    ("optim.lr=0", r"optim.lr must be a finite number > 0 \(got 0.0\)"),
    ("optim.lr=-1e-3", r"optim.lr must be a finite number > 0 \(got -0.001\)"),
    ("optim.eps=0", r"optim.eps must be a finite number > 0 \(got 0.0\)"),
    ("optim.eps=nan", r"optim.eps must be a finite number > 0 \(got nan\)"),
    ("optim.warmup=-1", r"optim.warmup must be an integer >= 0 \(got -1\)"),
    ("optim.grad_clip=-1", r"optim.grad_clip must be a finite number >= 0 \(got -1.0\)"),
    ("optim.beta1=1", r"optim.beta1 must be a finite number >= 0 and < 1 \(got 1.0\)"),
    ("optim.beta2=-0.1", r"optim.beta2 must be a finite number >= 0 and < 1 \(got -0.1\)"),
    ("optim.ema_rate=2", r"optim.ema_rate must be a finite number >= 0 and < 1 \(got 2.0\)"),
    ("optim.ema_rate=1", r"optim.ema_rate must be a finite number >= 0 and < 1 \(got 1.0\)"),
    ("optim.weight_decay=-0.01", r"optim.weight_decay must be a finite number >= 0 \(got -0.01\)"),
    ("model.width=0", r"model.width must be an integer >= 1 \(got 0\)"),
    ("model.depth=-1", r"model.depth must be an integer >= 0 \(got -1\)"),
    ("model.nf=0", r"model.nf must be an integer >= 1 \(got 0\)"),
    ("model.ch_mult=", r"model.ch_mult must be a non-empty list of integers >= 1 \(got \(\)\)"),
    ("model.ch_mult=1,0", r"model.ch_mult must be a non-empty list of integers >= 1 \(got \(1, 0\)\)"),
    ("model.num_res_blocks=0", r"model.num_res_blocks must be an integer >= 1 \(got 0\)"),
    ("model.attn_resolutions=0", r"model.attn_resolutions must be a list of positive resolutions"),
    ("model.dropout=1", r"model.dropout must be a finite number >= 0 and < 1 \(got 1.0\)"),
    ("model.dropout=-0.1", r"model.dropout must be a finite number >= 0 and < 1 \(got -0.1\)"),
    ("model.fourier_scale=0", r"model.fourier_scale must be a finite number > 0 \(got 0.0\)"),
    ("loss.n_probes=0", r"loss.n_probes must be an integer >= 1 \(got 0\)"),
    ("loss.order=4", r"loss.order must be 2 or 3 \(got 4\)"),
    ("loss.order_weights=1,1", r"loss.order_weights must be three finite numbers >= 0 \(got \(1.0, 1.0\)\)"),
    ("loss.order_weights=1,nan,1", r"loss.order_weights must be three finite numbers >= 0"),
    ("loss.objective=vdm", r"sde.name must be 'vdm' for loss.objective=vdm \(got 'vp'\)"),
    ("sde.T=0", r"sde.T must be a finite number > 0 \(got 0.0\)"),
    ("sde.t_min=1", r"sde.t_min must be a finite number >= 0 and < 1 \(got 1.0\): lower sde.t_min or raise sde.T"),
    ("sde.t_min=-1e-5", r"sde.t_min must be a finite number >= 0 and < 1 \(got -1e-05\)"),
    ("sde.gamma_min=6", r"sde.gamma_min must be a finite number < 5 \(got 6.0\)"),
    ("sde.schedule_features=0", r"sde.schedule_features must be an integer >= 1 \(got 0\)"),
    ("data.mixture=four_blobs", r"data.mixture must be one of \[.*'three_blobs_2d'\] \(got 'four_blobs'\)"),
    ("distributed.num_processes=0", r"distributed.num_processes must be an integer >= 1 \(got 0\)"),
])
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        get_config("mixture2d", [override])


def test_process_id_must_be_below_num_processes():
    with pytest.raises(ValueError, match=r"distributed.process_id must be < distributed.num_processes = 2 \(got 2\)"):
        get_config("mixture2d", ["distributed.num_processes=2", "distributed.process_id=2"])
    assert get_config("mixture2d", ["distributed.num_processes=2", "distributed.process_id=1"]).distributed.process_id == 1


@pytest.mark.parametrize("section, field, value, key", [
    ("train", "keep", 0, "train.keep"),  # trained, and left no checkpoint
    ("train", "log_every", 0, "train.log_every"),  # ZeroDivisionError
    ("train", "ckpt_every", 0, "train.ckpt_every"),  # ZeroDivisionError
    ("train", "batch_size", 0, "train.batch_size"),  # ZeroDivisionError
    ("train", "num_steps", -5, "train.num_steps"),  # did nothing, silently
    ("optim", "ema_rate", 2.0, "optim.ema_rate"),  # trained, silently
    ("optim", "lr", math.nan, "optim.lr"),  # saved NaN parameters
])
def test_train_validates_configs_built_without_overrides(tmp_path, section, field, value, key):
    """A Config changed with dataclasses.replace skips apply_overrides; train() validates it before it
    creates anything in the work directory (each of these used to train, crash or do nothing)."""
    cfg = get_config("mixture2d", TINY)
    cfg = dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **{field: value})})
    with pytest.raises(ValueError, match=rf"^{key} must be"):
        train(cfg, tmp_path / "run", log=lambda *a: None)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flag, value, message", [
    ("--log-every", "0", r"--log-every must be an integer >= 1 \(a history record every N steps\) \(got 0\)"),
    ("--ckpt-every", "0", r"--ckpt-every must be an integer >= 1"),
    ("--ckpt-every", "-3", r"--ckpt-every must be an integer >= 1 .*\(got -3\)"),
    ("--steps", "-1", r"--steps must be an integer >= 0"),
    ("--batch-size", "0", r"--batch-size must be an integer >= 1"),
    ("--lr", "nan", r"--lr must be a finite number > 0"),
    ("--lr", "0", r"--lr must be a finite number > 0"),
    ("--grad-clip", "-1", r"--grad-clip must be a finite number >= 0"),
    ("--layers", "0", r"--layers must be an integer >= 1"),
    ("--eval-draws", "1", r"--eval-draws must be an integer >= 2"),
    ("--eval-images", "-1", r"--eval-images must be an integer >= 0"),
    ("--num-images", "0", r"--num-images must be an integer >= 1"),
])
def test_dequant_command_line_checks_its_flags(tmp_path, capsys, flag, value, message):
    """``python -m training dequant`` with an out-of-range flag exits with status 2 and names the flag
    (--log-every 0 was a modulo by zero after the score model had loaded)."""
    import re

    from training.__main__ import main

    assert main(["dequant", "--workdir", str(tmp_path), "--no-progress", flag, value]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_train_dequantizer_checks_its_intervals():
    from training import dequant as dq

    images = tdata.load_digits().images[:8]
    with pytest.raises(ValueError, match=r"log_every must be ≥ 1 .*got log_every=0"):
        dq.train_dequantizer(None, numerics.VPSDE(), images, jax.random.key(0), steps=1, batch_size=4, log_every=0,
                             progress=False)
    with pytest.raises(ValueError, match=r"checkpoint_every=-1"):
        dq.train_dequantizer(None, numerics.VPSDE(), images, jax.random.key(0), steps=1, batch_size=4,
                             checkpoint_every=-1, progress=False)


# --- 4. NaN samples and dequantised floats -----------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_model():
    q = tdata.get_mixture("gaussian_2d")
    sde = numerics.VPSDE(t_min=1e-5)
    return q, sde, ev.eps_from_score(q.score_fn(sde), sde)


def test_bound_rejects_nan_samples_like_ode_nll(gaussian_model):
    """One NaN sample in 8: ode_nll, eps_offset_bound and eps_offset_bound_terms raise the same
    message (it used to be a silent NaN for the bound); inside jit the check travels with the graph."""
    q, sde, model = gaussian_model
    x = np.array(q.sample(jax.random.key(0), 8))
    x[3, 1] = np.nan
    x = jnp.asarray(x)
    want = "contains NaN or inf in 1 of 8 samples; remove or fix them."
    with pytest.raises(ValueError, match=f"^x {want}$"):
        ev.ode_nll(model, sde, x)
    with pytest.raises(ValueError, match=f"^x {want}$"):
        ev.eps_offset_bound(model, sde, x, jax.random.key(1), n_draws=2)
    x64 = x.at[5, 0].set(np.inf)
    with pytest.raises(ValueError, match="^x contains NaN or inf in 2 of 8 samples"):
        ev.eps_offset_bound(model, sde, x64, jax.random.key(1), n_draws=2)
    t = jnp.full((8,), 0.5)
    e = jnp.zeros_like(x64)
    with pytest.raises(ValueError, match="^x0 contains NaN or inf in 2 of 8 samples"):
        ev.eps_offset_bound_terms(model, sde, x64, t, e, e)
    jitted = jax.jit(lambda x0: ev.eps_offset_bound_terms(model, sde, x0, t, e, e).total)
    with pytest.raises(Exception, match="x0 contains NaN or inf in some of 8 samples"):
        jax.block_until_ready(jitted(x64))
    # finite input: the same draw as before the check (the check passes values through)
    good = jnp.asarray(q.sample(jax.random.key(2), 8))
    a = ev.eps_offset_bound_terms(model, sde, good, t, e, e).total
    b = ev.eps_offset_bound_terms(model, sde, good, t, e, e, check_finite=False).total
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.all(np.isfinite(np.asarray(a)))


def test_bits_per_dim_and_dequantize_need_raw_uint8_pixels(gaussian_model):
    """Dequantised floats (or int64 pixels) passed where raw 8-bit images are expected raise the
    dequantiser's message instead of being dequantised a second time."""
    _, sde, model = gaussian_model
    images = tdata.load_digits().images[:2]
    floats = (images.astype(np.float32) + 0.5) / 128.0 - 1.0
    for fn in (ev.image_nll_bpd, ev.image_bound_bpd):
        with pytest.raises(ValueError, match=r"images_uint8 must be 8-bit pixels \(dtype uint8\).*got dtype float32\. "
                                             r"Pass the raw integer images, not dequantised floats\."):
            fn(model, sde, floats, jax.random.key(0))
        with pytest.raises(ValueError, match=r"got dtype int64.*images_uint8\.astype\(np\.uint8\)"):
            fn(model, sde, images.astype(np.int64), jax.random.key(0))
        with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
            fn(model, sde, images[0], jax.random.key(0))
    # the project's tests check jaxtyping annotations at run time (TypeError); without them, ValueError
    with pytest.raises((ValueError, TypeError)):
        tdata.dequantize(jnp.asarray(floats), jax.random.key(0))
    with pytest.raises(ValueError, match=r"k must be 8-bit pixels \(dtype uint8\)"):
        tdata.check_pixels(jnp.asarray(floats), "k")


def test_dequantize_with_is_song_et_al_map():
    """x = 2(k + u)/256 − 1 (centred) and (k + u)/256, against float64 arithmetic; uniform
    dequantisation is this map at u ~ U[0, 1) drawn from the key."""
    k = np.array([[0, 1, 128, 254, 255]], np.uint8)
    u = np.array([[0.0, 0.25, 0.5, 0.75, 0.999]], np.float32)
    y = (k.astype(np.float64) + u.astype(np.float64)) / 256.0
    np.testing.assert_allclose(np.asarray(tdata.dequantize_with(jnp.asarray(k), jnp.asarray(u))), 2 * y - 1, rtol=0,
                               atol=1e-7)
    np.testing.assert_allclose(np.asarray(tdata.dequantize_with(jnp.asarray(k), jnp.asarray(u), centered=False)), y,
                               rtol=0, atol=1e-7)
    key = jax.random.key(3)
    u_key = jax.random.uniform(key, k.shape, dtype=F32)
    np.testing.assert_array_equal(np.asarray(tdata.dequantize(jnp.asarray(k), key)),
                                  np.asarray(tdata.dequantize_with(jnp.asarray(k), u_key)))


# --- 5. the dequantiser checks finiteness before every checkpoint -------------------------------------


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")
def test_dequantiser_never_checkpoints_a_non_finite_flow():
    """lr = 1e39 is infinite in float32: the first update makes the flow non-finite while the first
    objective is finite. With a history record only every 100 steps and a checkpoint every 2, the
    dequantiser used to save the non-finite flow at step 2; now it stops before that checkpoint and
    names step 1."""
    from training import dequant as dq

    sde = numerics.VPSDE(t_min=1e-5)
    model = ev.eps_from_score(lambda x, t: -x, sde)  # N(0, I) data: the VP marginals stay N(0, I)
    images = tdata.load_digits().images[:16]
    saved = []
    with pytest.raises(FloatingPointError, match=r"non-finite dequantiser parameters or optimiser state after the "
                                                  r"update at step 1; stopping \(the state after it was not saved"):
        dq.train_dequantizer(model, sde, images, jax.random.key(0), steps=10, batch_size=8, lr=1e39, hidden=4,
                             n_layers=1, n_components=1, log_every=100, progress=False,
                             checkpoint=lambda r: saved.append(r), checkpoint_every=2)
    assert saved == []


# --- 6. one reader for every config.json ---------------------------------------------------------------


_DAMAGED = {"empty": b"", "cut off": b'{"model": {"name": "mlp", "wid', "not UTF-8": b'{"name": "caf\xe9"}'}


@pytest.mark.parametrize("damage", sorted(_DAMAGED))
def test_every_reader_of_a_config_json_gives_the_same_clear_error(tmp_path, capsys, damage):
    """An empty, cut-off or non-UTF-8 config.json gives the same message wherever it is read
    (training.fileio.read_json): "<file> cannot be read as JSON (<cause>); <fix>" — a WorkdirError for
    evaluation, sampling and the dequantiser (training.evaluate.locate_checkpoint), a ValueError for a
    resume or train.init_from (training.train._read_run_config) and for a saved dequantiser's own
    config.json; the command lines exit 2 with it. (locate_checkpoint used to let a non-UTF-8 file's
    UnicodeDecodeError escape and named no file.)"""
    import re

    from training import dequant as dq
    from training.__main__ import main
    from training.train import _check_resume_config

    cfg_path = tmp_path / "config.json"
    cfg_path.write_bytes(_DAMAGED[damage])
    cause = r"\((JSONDecodeError|UnicodeDecodeError): .*\); "
    with pytest.raises(ev.WorkdirError, match=re.escape(str(cfg_path)) + " cannot be read as JSON " + cause +
                       "restore it from the training run, or pass the --workdir of another training run"):
        ev.locate_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=re.escape(str(cfg_path)) + " cannot be read as JSON " + cause + "restore it"):
        _check_resume_config(get_config("mixture2d"), str(cfg_path), 5, str(tmp_path / "checkpoints"))
    deq_dir = tmp_path / "dequantizer"
    deq_dir.mkdir()
    (deq_dir / "config.json").write_bytes(_DAMAGED[damage])
    with pytest.raises(ValueError, match=re.escape(str(deq_dir / "config.json")) + " cannot be read as JSON " + cause +
                       "remove .* and fit the dequantiser again"):
        dq._read_config(str(deq_dir))
    for command in (["eval"], ["sample"], ["dequant", "--steps", "1"]):
        assert main([*command, "--workdir", str(tmp_path)]) == 2, command
        assert f"{cfg_path} cannot be read as JSON" in capsys.readouterr().err, command


def test_read_json_reads_json_and_names_an_unreadable_file(tmp_path):
    from training.fileio import read_json

    (tmp_path / "a.json").write_text('{"x": [1, 2]}')
    assert read_json(tmp_path / "a.json", fix="unused") == {"x": [1, 2]}
    with pytest.raises(ValueError, match=rf"{tmp_path} cannot be read as JSON \(IsADirectoryError: .*\); fix it"):
        read_json(tmp_path, fix="fix it")
    with pytest.raises(KeyError, match=r"missing.json cannot be read as JSON \(FileNotFoundError"):
        read_json(tmp_path / "missing.json", fix="fix it", error=KeyError)
