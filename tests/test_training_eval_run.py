"""``python -m training eval`` (training.eval_run): the summary JSON against independent calls of
training.evaluate / numerics on a tiny trained mixture model, kill-and-resume through a real
SIGKILL, data parallelism on 2 simulated CPU devices, bad inputs, and the 8-bit image path on the
embedded digits with an untrained DDPM++.

The 2-device run needs a fresh process (XLA_FLAGS before jax is imported), the killed run is a
real process; both start in the background as soon as the trained work directory exists (a
thread SIGKILLs the second once its per-batch file holds a finished batch), so their start-up and
compilation overlap the in-process tests.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from subprocess_env import REPO, subprocess_env

from training import evaluate as ev
from training.__main__ import main
from training.configs import config_to_dict, get_config
from training.data import get_mixture


MIX_OVERRIDES = ["model.width=32", "model.depth=1", "train.num_steps=300", "train.batch_size=128",
                 "train.progress=false", "train.ckpt_every=300", "train.log_every=100",
                 # EMA 0.995 would still hold 0.995^300 = 22% of the random initialisation after 300 steps
                 "optim.ema_rate=0.9"]
# the options of the in-process reference evaluation (test 1) and of the 2-device run
N_MIX, BS = 90, 16  # 90 = 5 full batches + one of 10 examples padded to 16
MIX_ARGS = ["--num-examples", str(N_MIX), "--batch-size", str(BS), "--bound-draws", "8", "--vlb-draws", "8",
            "--no-progress"]




def _copy_run(src, dst) -> str:
    """A fresh work directory with the checkpoints and config of ``src`` (no eval/ results)."""
    os.makedirs(dst)
    shutil.copytree(os.path.join(src, "checkpoints"), os.path.join(dst, "checkpoints"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
    return str(dst)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    from training.__main__ import main

    assert jax.device_count() == 2, jax.devices()
    workdir, args = sys.argv[1], sys.argv[2:]
    rc = main(["eval", "--workdir", workdir, "--metrics", "ode", "--batch-size", "3"])
    print("NOT_DIVISIBLE_RC", rc, flush=True)
    sys.exit(main(["eval", "--workdir", workdir] + args))
    """
)


# the killed evaluation: ODE only, 12 batches of BS (the shapes the in-process runs compile anyway)
KILL_BATCHES = 12
KILL_ARGS = ["--metrics", "ode", "--num-examples", str(KILL_BATCHES * BS), "--batch-size", str(BS), "--no-progress"]
# the default summary names of these evaluations (training.eval_run.summary_variant): the examples and
# metrics that differ from the defaults are in the name, so they do not overwrite the default summary
MIX_SUMMARY = f"eval_step300_continuous_n{N_MIX}.json"
KILL_SUMMARY = f"eval_step300_continuous_n{KILL_BATCHES * BS}_ode.json"
KILL_FILE = os.path.join("eval", f"step300-ema-seed0-bs{BS}-mixture-three_blobs_2d-n{KILL_BATCHES * BS}-ds0",
                         "ode-continuous-exact-tol1e-05-dev1.jsonl")


KILLER_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, time
    pid, path, k = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    t0 = time.time()
    while time.time() - t0 < 300:
        try:
            with open(path) as f:
                n_done = sum(1 for line in f if line.endswith("\\n")) - 1  # minus the header line
        except FileNotFoundError:
            n_done = 0
        if n_done >= k:
            os.kill(pid, signal.SIGKILL)
            sys.exit(0)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(3)  # the evaluation ended on its own
        time.sleep(0.001)
    sys.exit(4)
    """
)


class _Killer(threading.Thread):
    """SIGKILLs ``proc`` as soon as the per-batch file at ``path`` holds ``k`` finished batches. The
    watching runs in its own small process: a thread of the test process could wait for the GIL
    while the test compiles, long enough for the evaluation to finish every batch."""

    def __init__(self, proc, path, k: int = 1):
        super().__init__(daemon=True)
        self.proc, self.error = proc, None
        self.watcher = subprocess.Popen([sys.executable, "-c", KILLER_SCRIPT, str(proc.pid), path, str(k)])

    def run(self):
        try:
            rc = self.watcher.wait(timeout=400)
            if rc == 3:
                raise AssertionError(f"eval ended (rc={self.proc.wait()}) before a finished batch was seen: "
                                     f"{self.proc.stderr.read()[-3000:]}")
            if rc != 0:
                raise AssertionError(f"no finished batch appeared in time (watcher rc={rc})")
        except AssertionError as e:
            self.error = e
        finally:
            self.proc.wait()


@pytest.fixture(scope="module")
def mix(tmp_path_factory):
    """A 300-step mixture2d run; starts, in the background, the 2-device evaluation of one copy and
    the evaluation of another that a thread kills midway."""
    from training.train import train

    root = tmp_path_factory.mktemp("eval_run")
    workdir = str(root / "mix")
    train(get_config("mixture2d", MIX_OVERRIDES), workdir, log=lambda *a: None)
    sharded_dir = _copy_run(workdir, root / "mix_2dev")
    script = root / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    sharded = subprocess.Popen([sys.executable, str(script), sharded_dir] + MIX_ARGS, env=subprocess_env(devices=2), cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed_dir = _copy_run(workdir, root / "killed")
    killed = subprocess.Popen([sys.executable, "-m", "training", "eval", "--workdir", killed_dir] + KILL_ARGS,
                              env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killer = _Killer(killed, os.path.join(killed_dir, KILL_FILE))
    killer.start()
    yield dict(workdir=workdir, root=root, sharded_dir=sharded_dir, sharded_proc=sharded, killed_dir=killed_dir,
               killed_proc=killed, killer=killer)
    for proc in (sharded, killed):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _records(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()][1:]  # the first line is the header


def _per_example(summary, metric, key="nats", sub=None) -> np.ndarray:
    recs = _records(summary["results"][metric]["batch_file"])
    return np.concatenate([np.asarray(r[key] if sub is None else r[key][sub], np.float64) for r in recs])


def _test_points(n: int, data_seed: int = 0) -> np.ndarray:
    """The mixture test set as the eval_run docstring documents it."""
    q = get_mixture("three_blobs_2d")
    return np.asarray(q.sample(jax.random.fold_in(jax.random.key(data_seed), 0x7E57), n), np.float64)


@pytest.fixture(scope="module")
def mix_summary(mix):
    """The 1-device CLI evaluation of the mixture run (its screen output under "_screen")."""
    screen = io.StringIO()
    with contextlib.redirect_stdout(screen):
        rc = main(["eval", "--workdir", mix["workdir"]] + MIX_ARGS)
    assert rc == 0
    with open(os.path.join(mix["workdir"], MIX_SUMMARY)) as f:
        return dict(json.load(f), _screen=screen.getvalue())


def test_mixture_summary_matches_independent_computations(mix, mix_summary):
    """The JSON's numbers against independent calls on the same test points: the ODE NLL equals
    training.evaluate.ode_nll batch by batch (exact trace, deterministic; the padded last batch too),
    the bound equals training.evaluate.eps_offset_bound with the documented key of batch 0, the
    VLB total is the sum of its terms, the reported entropy is −mean log q. Every metric is an
    expected NLL of a normalised model, so its mean is ≥ the entropy H(q) − 3 SE (cross-entropy ≥
    entropy)."""
    s = mix_summary
    out = s["_screen"]
    assert "true −log q(x)" in out and "wrote " in out and "bound − ode" in out
    assert s["schema"] == "training.eval_run/2" and s["checkpoint_step"] == 300 and s["parameters"] == "ema"
    assert s["data"]["n"] == N_MIX and s["data"]["dims"] == 2 and s["options"]["divergence"] == "exact"
    r = s["results"]
    x = _test_points(N_MIX)
    model, _, sde, step = ev.load_model(mix["workdir"])
    assert step == 300

    # ODE: the last batch (10 examples, padded to 16 with copies of its last one, which leaves the
    # worst-per-example step control and hence every value unchanged) solved alone
    ode = _per_example(s, "ode")
    ref = ev.ode_nll(model, sde, jnp.asarray(x[5 * BS :]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ode[5 * BS :], ref.values, rtol=0, atol=1e-9)
    assert r["ode"]["nats"]["mean"] == pytest.approx(float(np.mean(ode)), abs=1e-12)
    assert r["ode"]["nats_per_dim"]["mean"] == pytest.approx(float(np.mean(ode)) / 2, abs=1e-12)
    assert r["ode"]["nats"]["se"] == pytest.approx(float(np.std(ode, ddof=1) / math.sqrt(N_MIX)), rel=1e-12)
    nfe = _per_example(s, "ode", "nfe")
    assert r["ode"]["nfe"]["mean"] == pytest.approx(float(nfe.mean())) and nfe.min() > 6

    # bound: batch 0's draws come from fold_in(fold_in(key(seed), batch), 2)
    bound = _per_example(s, "bound")
    key0 = jax.random.fold_in(jax.random.fold_in(jax.random.key(0), 0), 2)
    ref_b = ev.eps_offset_bound(model, sde, jnp.asarray(x[:BS]), key0, n_draws=8)
    np.testing.assert_allclose(bound[:BS], ref_b.values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_per_example(s, "bound", "se")[:BS], ref_b.stderr, rtol=1e-12, atol=1e-12)

    # VLB: per example and in the means, total = prior + reconstruction + diffusion
    vlb = _per_example(s, "vlb")
    terms = {t: _per_example(s, "vlb", "terms", t) for t in ("prior", "reconstruction", "diffusion")}
    np.testing.assert_allclose(vlb, sum(terms.values()), rtol=1e-12, atol=1e-10)
    assert r["vlb"]["nats"]["mean"] == pytest.approx(sum(r["vlb"]["terms"][t]["nats"]["mean"] for t in terms), abs=1e-10)
    assert r["vlb"]["decoder"] == "gaussian" and r["vlb"]["dequantization"] == "continuous"
    # the Gaussian decoder's mean reconstruction loss is (D/2)(1 + log 2π − log SNR(t_min)) (THEORY.md §4.2)
    recon_mean = float(1 + math.log(2 * math.pi) - sde.log_snr(sde.t_min))
    assert abs(r["vlb"]["terms"]["reconstruction"]["nats"]["mean"] - recon_mean) < 4 * r["vlb"]["terms"]["reconstruction"]["nats"]["se"]

    # the exact entropy estimate and the cross-entropy inequalities
    true = -np.asarray(get_mixture("three_blobs_2d").log_prob(jnp.asarray(x)), np.float64)
    assert r["true_nll"]["nats"]["mean"] == pytest.approx(float(true.mean()), abs=1e-12)
    for m in ("ode", "bound", "vlb"):
        exc = r[m]["excess_over_true"]
        assert exc["mean"] == pytest.approx(r[m]["nats"]["mean"] - r["true_nll"]["nats"]["mean"], abs=1e-10)
        assert exc["mean"] > -3 * exc["se"], (m, exc)
    g = r["gaps"]["bound − ode"]
    assert g["mean"] == pytest.approx(float(np.mean(bound - ode)), abs=1e-12)


def test_two_devices_shard_the_batch_and_reproduce_one_device(mix, mix_summary):
    """The same evaluation on 2 simulated CPU devices (batch split over a NamedSharding): the bound and
    the VLB equal the 1-device numbers (measured bitwise; asserted to 1e-12), the ODE NLL agrees to the
    solver's accuracy (a last-bit difference of the sharded network changes the adaptive step sequence:
    measured ≤ 4e-3 nats at tol 1e-5, NFE ≈ 1300); a batch size not divisible by 2 is refused."""
    proc = mix["sharded_proc"]
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    assert "NOT_DIVISIBLE_RC 2" in out
    assert "--batch-size 3 is not divisible by the 2 devices" in err and "--batch-size 2" in err
    with open(os.path.join(mix["sharded_dir"], MIX_SUMMARY)) as f:
        s2 = json.load(f)
    assert s2["options"]["devices"] == 2
    for m in ("ode", "bound", "vlb"):
        assert all(rec["devices"] == 2 for rec in _records(s2["results"][m]["batch_file"]))
    for m in ("bound", "vlb"):
        np.testing.assert_allclose(_per_example(s2, m), _per_example(mix_summary, m), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_per_example(s2, "ode"), _per_example(mix_summary, "ode"), rtol=0, atol=2e-2)


def test_sigkill_and_resume_gives_the_uninterrupted_numbers(mix, mix_summary, capsys):
    """A CLI evaluation (a real process) SIGKILLed once its per-batch file holds a finished batch; we add
    the half-written line a kill during a write leaves, and rerun: the rerun says it skips the k
    finished batches, leaves their records byte for byte, drops the partial line, and its results
    equal those of an uninterrupted run exactly."""
    del mix_summary  # compiled, in this process, the shapes used here
    killer, proc = mix["killer"], mix["killed_proc"]
    killer.join(timeout=300)
    assert killer.error is None, killer.error
    assert proc.returncode == -signal.SIGKILL
    wk = mix["killed_dir"]
    path = os.path.join(wk, KILL_FILE)
    with open(path, "rb") as f:
        before = f.read()
    before = before[: before.rfind(b"\n") + 1]  # complete lines only
    k = before.count(b"\n") - 1
    assert 1 <= k < KILL_BATCHES, f"the killed run must have stopped midway (k={k})"
    assert not os.path.exists(os.path.join(wk, KILL_SUMMARY))
    with open(path, "ab") as f:
        f.write(b'{"batch": ' + str(k).encode() + b', "start": ')  # a record cut short by the kill

    capsys.readouterr()
    assert main(["eval", "--workdir", wk] + KILL_ARGS) == 0
    out = capsys.readouterr().out
    assert f"ode: {k} of {KILL_BATCHES} batches already done" in out and "skipping them" in out
    with open(path, "rb") as f:
        after = f.read()
    assert after.startswith(before)
    assert [r["batch"] for r in _records(path)] == list(range(KILL_BATCHES))

    wu = _copy_run(mix["workdir"], mix["root"] / "uninterrupted")
    assert main(["eval", "--workdir", wu] + KILL_ARGS) == 0
    assert "skipping" not in capsys.readouterr().out
    with open(os.path.join(wk, KILL_SUMMARY)) as f:
        sk = json.load(f)
    with open(os.path.join(wu, KILL_SUMMARY)) as f:
        su = json.load(f)
    np.testing.assert_array_equal(_per_example(sk, "ode"), _per_example(su, "ode"))
    np.testing.assert_array_equal(_per_example(sk, "ode", "nfe"), _per_example(su, "ode", "nfe"))
    for key in ("nats", "nats_per_dim", "nfe", "excess_over_true"):
        assert sk["results"]["ode"][key] == su["results"]["ode"][key]


def test_a_second_evaluation_with_the_same_options_is_refused_while_the_first_runs(mix, mix_summary, capsys):
    """Two evaluations with the same options would append the same batches to one file: while another
    process holds DIR/eval/<tag>/.lock, eval exits 2 naming the directory and the holder; once that
    process is gone (killed: the OS drops its lock), the same command runs (all batches reused)."""
    eval_dir = os.path.dirname(mix_summary["results"]["ode"]["batch_file"])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid 4242 on host h: evaluation'); print('held', flush=True); "
         "time.sleep(120)", os.path.join(eval_dir, ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        capsys.readouterr()
        assert main(["eval", "--workdir", mix["workdir"]] + MIX_ARGS) == 2
        err = capsys.readouterr().err
        assert f"{eval_dir} is in use by another process (pid 4242 on host h: evaluation" in err and "--seed" in err, err
    finally:
        holder.kill()
        holder.wait()
    assert main(["eval", "--workdir", mix["workdir"]] + MIX_ARGS) == 0
    assert "skipping them (resumed)" in capsys.readouterr().out


def test_stored_batches_are_reused_only_for_the_same_model_and_examples(mix, mix_summary, tmp_path, capsys):
    """A copy of the finished evaluation's per-batch files. (1) One ODE record marked as computed on other
    examples (its data_sha; its values made absurd): the rerun skips the other batches, recomputes that
    one, and the summary equals the original. (2) A header from another model (a run retrained under the
    same step): exit 2 naming the differing setting and the file to delete. (3) A damaged line in the
    middle: exit 2 naming the file and line (only a cut-off last line is dropped silently). Options a
    metric does not depend on (the VLB's draws for the ODE, the ODE's tolerance for the bound) may change."""
    wk = _copy_run(mix["workdir"], tmp_path / "copy")
    shutil.copytree(os.path.join(mix["workdir"], "eval"), os.path.join(wk, "eval"))
    path = os.path.join(wk, os.path.relpath(mix_summary["results"]["ode"]["batch_file"], mix["workdir"]))
    with open(path) as f:
        lines = f.read().splitlines(keepends=True)
    n_batches = -(-N_MIX // BS)
    assert len(lines) == 1 + n_batches and json.loads(lines[0])["header"]["model"]
    original = json.loads(lines[3])
    assert original["batch"] == 2 and len(original["data_sha"]) == 16
    rec = dict(original, data_sha="0" * 16, nats=[1e6] * len(original["nats"]))
    here = json.loads(lines[1])["computed_on"]
    assert here.startswith(f"{jax.devices()[0].platform} (") and f"jax {jax.__version__}" in here
    elsewhere = dict(json.loads(lines[1]), computed_on="tpu (TPU v4), jax 0.4.0")  # batch 0, resumed from elsewhere
    with open(path, "w") as f:
        f.write("".join(lines[:1] + [json.dumps(elsewhere) + "\n"] + lines[2:3] + [json.dumps(rec) + "\n"] + lines[4:]))

    capsys.readouterr()
    assert main(["eval", "--workdir", wk] + MIX_ARGS) == 0
    out = capsys.readouterr().out
    assert f"ode: {n_batches - 1} of {n_batches} batches already done" in out
    assert "ode's batches were computed on more than one platform or JAX version" in out and path in out, out
    with open(os.path.join(wk, MIX_SUMMARY)) as f:
        again = json.load(f)
    assert again["results"]["ode"]["computed_on"] == sorted([here, "tpu (TPU v4), jax 0.4.0"])
    assert again["results"]["bound"]["computed_on"] == [here]
    recomputed = _records(path)[-1]  # appended; the last record of a batch wins
    assert recomputed["batch"] == 2 and recomputed["data_sha"] == original["data_sha"]
    np.testing.assert_allclose(recomputed["nats"], original["nats"], rtol=1e-12, atol=1e-12)
    for key in ("nats", "nats_per_dim", "excess_over_true"):
        assert again["results"]["ode"][key] == mix_summary["results"]["ode"][key]
    # an option a metric does not depend on may change: its stored batches are still reused
    for other in (["--metrics", "ode,bound", "--vlb-draws", "4"], ["--metrics", "bound", "--tol", "1e-4"]):
        assert main(["eval", "--workdir", wk] + MIX_ARGS + other) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        for m in other[1].split(","):
            assert f"{m}: {n_batches} of {n_batches} batches already done" in out, (other, out)

    header = json.loads(lines[0])
    header["header"]["model"] = "deadbeef"
    with open(path, "w") as f:
        f.write("".join([json.dumps(header) + "\n"] + lines[1:]))
    assert main(["eval", "--workdir", wk] + MIX_ARGS) == 2
    err = capsys.readouterr().err
    assert f"{path} holds batches computed with other settings (model: 'deadbeef' there" in err, err
    assert f"delete {path}" in err

    with open(path, "w") as f:
        f.write("".join(lines[:2] + ["not json\n"] + lines[3:]))
    assert main(["eval", "--workdir", wk] + MIX_ARGS) == 2
    err = capsys.readouterr().err
    assert f"{path}, line 3: not a JSON record" in err and f"delete {path}" in err, err


def test_bad_inputs_name_the_argument_and_the_fix(mix, tmp_path, capsys):
    """Missing work directory, no config.json, no checkpoint, unknown --step, unknown metric: exit
    code 2 and a message naming the argument and what to do (batch divisibility: the 2-device test)."""
    cases = [
        (["--workdir", str(tmp_path / "nowhere")], ["--workdir", "no such directory", "python -m training train"]),
        (["--workdir", str(tmp_path)], ["no config.json", "--workdir"]),
    ]
    nockpt = tmp_path / "nockpt"
    nockpt.mkdir()
    (nockpt / "config.json").write_text(json.dumps(config_to_dict(get_config("mixture2d"))))
    cases.append((["--workdir", str(nockpt)], ["no checkpoint", "python -m training train"]))
    cases.append((["--workdir", mix["workdir"], "--step", "7"], ["--step 7", "available steps: [300]"]))
    cases.append((["--workdir", mix["workdir"], "--metrics", "ode,nll"], ["--metrics", "'nll'", "ode,bound,vlb"]))
    cases.append((["--workdir", mix["workdir"], "--tol", "0"], ["--tol"]))
    # a hand-edited config.json is checked like a command-line config (training.configs.validate)
    edited = _copy_run(mix["workdir"], tmp_path / "edited")
    cfg_path = os.path.join(edited, "config.json")
    bad = json.loads(open(cfg_path).read())
    bad["sde"]["t_min"] = 2.0
    open(cfg_path, "w").write(json.dumps(bad))
    cases.append((["--workdir", edited], [cfg_path, "sde.t_min", "restore the file"]))
    for argv, needles in cases:
        capsys.readouterr()
        assert main(["eval"] + argv) == 2, argv
        err = capsys.readouterr().err
        for needle in needles:
            assert needle in err, (argv, err)
    assert not os.path.exists(tmp_path / "nowhere")  # nothing created on the way


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
    """An untrained DDPM++ on the digits, its step-0 checkpoint written as train() writes it
    (compiling a training step of DDPM++ takes over a minute on this CPU; evaluation needs none)."""
    from training.checkpoint import Checkpointer
    from training.train import init_state

    d = tmp_path_factory.mktemp("digits")
    # the digits preset shrunk for compile time: one resolution, no attention
    cfg = get_config("digits", ["model.nf=8", "model.ch_mult=1", "model.attn_resolutions=", "train.num_steps=1",
                                "train.batch_size=8", "train.progress=false"])
    state, _, _, _ = init_state(cfg, (1, 8, 8))
    ck = Checkpointer(d / "checkpoints", write=True, every=1)
    ck.save(0, state, force=True)
    ck.close()
    (d / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True))
    return str(d)


def test_digits_vlb_with_discrete_decoder_and_bound_in_bits_per_dim(digits_workdir, capsys):
    """8-bit digits, --limit 8, --vlb-data discrete: the VLB with VDM's discrete decoder on the pixels
    (no dequantisation) with its three terms, and the uniformly dequantised bound, in bits/dim: finite,
    positive, the bound's bits/dim = nats/(D ln 2) + 8 − log₂ 2, the VLB's = nats/(D ln 2) and its
    total the sum of its terms."""
    assert main(["eval", "--workdir", digits_workdir, "--limit", "8", "--batch-size", "8", "--metrics", "vlb,bound",
                 "--bound-draws", "2", "--vlb-draws", "2", "--vlb-data", "discrete", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out
    with open(os.path.join(digits_workdir, "eval_step0_uniform_limit8_bound+vlb_vlb-discrete.json")) as f:
        s = json.load(f)
    assert s["data"]["name"] == "digits" and s["data"]["n"] == 8 and s["data"]["dims"] == 64
    r = s["results"]
    assert set(r) == {"vlb", "bound"}
    D = 64
    vlb, bound = r["vlb"], r["bound"]
    assert vlb["decoder"] == "discrete" and vlb["dequantization"].startswith("none")
    assert bound["dequantization"] == "uniform"
    for blk in [vlb["bits_per_dim"], bound["bits_per_dim"]] + [vlb["terms"][t]["bits_per_dim"] for t in vlb["terms"]]:
        assert np.isfinite(blk["mean"]) and np.isfinite(blk["se"]) and blk["unit"] == "bits/dim"
    assert set(vlb["terms"]) == {"prior", "reconstruction", "diffusion"}
    assert vlb["bits_per_dim"]["mean"] > 0 and bound["bits_per_dim"]["mean"] > 0
    for t in vlb["terms"]:
        assert vlb["terms"][t]["bits_per_dim"]["mean"] >= 0  # KL, −log of a probability, L_∞: all ≥ 0
    assert vlb["bits_per_dim"]["mean"] == pytest.approx(sum(vlb["terms"][t]["bits_per_dim"]["mean"] for t in vlb["terms"]))
    assert vlb["bits_per_dim"]["mean"] == pytest.approx(vlb["nats"]["mean"] / (D * math.log(2)))
    assert bound["bits_per_dim"]["mean"] == pytest.approx(bound["nats"]["mean"] / (D * math.log(2)) + 7.0)


def test_vlb_data_follows_the_training_data():
    """--vlb-data auto evaluates the VLB on the data the model was trained on: VDM's discrete decoder
    only for VDM training on the 8-bit pixels; dequantised data for DSM models and for VDM with
    loss.vdm_data=continuous; the Gaussian decoder for mixtures. Explicit choices win on images and are
    a clear error on continuous data."""
    from training.eval_run import EvalError, vlb_data_mode

    assert vlb_data_mode(get_config("digits"), "image") == "dequantized"  # DSM on dequantised digits
    assert vlb_data_mode(get_config("digits_vdm"), "image") == "discrete"
    assert vlb_data_mode(get_config("digits_vdm", ["loss.vdm_data=continuous"]), "image") == "dequantized"
    assert vlb_data_mode(get_config("cifar10_vdm"), "image") == "discrete"
    assert vlb_data_mode(get_config("cifar10_vp_ddpmpp_g2_is"), "image") == "dequantized"
    assert vlb_data_mode(get_config("mixture2d_vdm"), "continuous") == "continuous"
    assert vlb_data_mode(get_config("digits_vdm"), "image", "dequantized") == "dequantized"
    assert vlb_data_mode(get_config("digits"), "image", "discrete") == "discrete"
    with pytest.raises(EvalError, match="--vlb-data discrete applies to 8-bit image data.*drop --vlb-data"):
        vlb_data_mode(get_config("mixture2d_vdm"), "continuous", "discrete")
    with pytest.raises(EvalError, match="--vlb-data must be one of auto, discrete, dequantized"):
        vlb_data_mode(get_config("digits"), "image", "pixels")


def test_digits_vlb_on_dequantised_data_is_paired_with_the_bound(digits_workdir):
    """A DSM model of the digits (trained on uniformly dequantised data): by default its VLB uses the
    Gaussian decoder on the SAME dequantised images as the bound (--dequant), so its bits/dim carry
    the same offset 8 − log₂ 2 as the bound's, and its terms (nats/(D ln 2) each) sum to the total
    without it."""
    out = os.path.join(digits_workdir, "vlb_dequantized.json")
    assert main(["eval", "--workdir", digits_workdir, "--limit", "8", "--batch-size", "8", "--metrics", "vlb,bound",
                 "--bound-draws", "2", "--vlb-draws", "2", "--no-progress", "--out", out]) == 0
    with open(out) as f:
        r = json.load(f)["results"]
    D = 64
    vlb, bound = r["vlb"], r["bound"]
    assert vlb["decoder"] == "gaussian" and vlb["data"] == "dequantized"
    assert vlb["dequantization"] == bound["dequantization"] == "uniform"
    assert vlb["bits_per_dim"]["mean"] == pytest.approx(vlb["nats"]["mean"] / (D * math.log(2)) + 7.0)
    terms_bpd = sum(vlb["terms"][t]["bits_per_dim"]["mean"] for t in ("prior", "reconstruction", "diffusion"))
    assert terms_bpd == pytest.approx(vlb["bits_per_dim"]["mean"] - 7.0)
    assert np.isfinite(vlb["nats"]["mean"]) and vlb["nats"]["se"] > 0


class _FakeDequant:
    """Stands in for training/dequant.py (another engineer's module): q(u|k) is the uniform
    dequantiser's own u (same key) with a constant log q of LOG_Q nats per image."""

    LOG_Q = 3.0

    def __init__(self, saved: bool, score_step: int = 0, damaged: bool = False):
        self.saved, self.score_step, self.damaged = saved, score_step, damaged

    def add_arguments(self, parser):  # training/__main__.py registers the module's sub-command
        parser.add_argument("--workdir")

    def run(self, args):
        raise AssertionError("not called")

    def load_dequantizer(self, workdir, with_config=False):
        if self.damaged:
            raise ValueError(f"{workdir}/dequantizer/flow.eqx cannot be read (EOFError); remove it and fit again")
        deq = {"c": jnp.asarray(self.LOG_Q)} if self.saved else None
        return (deq, {"score_step": self.score_step}) if with_config and deq is not None else deq

    @staticmethod
    def dequantize_variational(deq, images_uint8, key):
        from training.data import dequantize

        return dequantize(images_uint8, key, centered=True), jnp.full((images_uint8.shape[0],), deq["c"])


def test_variational_dequantisation_adds_log_q_and_fails_clearly_without_a_dequantiser(digits_workdir, monkeypatch,
                                                                                      capsys):
    """--dequant variational reports E_q[−log p(x) + log q(u|k)] (THEORY.md §2.9): with q's u equal to
    the uniform dequantiser's and log q ≡ 3 nats, the bound moves by exactly 3/(D ln 2) bits/dim from
    the uniform run's. A dequantiser fitted to another checkpoint is named on screen and in the summary.
    Without a saved dequantiser, with a damaged one, or without training/dequant.py, exit 2 and the error
    names the fix."""
    import training

    common = ["eval", "--workdir", digits_workdir, "--limit", "8", "--batch-size", "8", "--metrics", "bound,vlb",
              "--bound-draws", "2", "--vlb-draws", "2", "--no-progress"]
    fake = _FakeDequant(saved=True)
    monkeypatch.setitem(sys.modules, "training.dequant", fake)
    monkeypatch.setattr(training, "dequant", fake, raising=False)
    assert main(common + ["--dequant", "variational"]) == 0
    with open(os.path.join(digits_workdir, "eval_step0_variational_limit8_bound+vlb.json")) as f:
        var_all = json.load(f)["results"]
    assert main(common) == 0
    with open(os.path.join(digits_workdir, "eval_step0_uniform_limit8_bound+vlb.json")) as f:
        uni_all = json.load(f)["results"]
    for m in ("bound", "vlb"):  # the VLB of this DSM model is on the same dequantised data (--vlb-data auto)
        var, uni = var_all[m], uni_all[m]
        assert var["dequantization"].startswith("variational-") and uni["dequantization"] == "uniform"
        assert var["mean_log_q_nats"] == pytest.approx(3.0)
        assert var["bits_per_dim"]["mean"] == pytest.approx(uni["bits_per_dim"]["mean"] + 3.0 / (64 * math.log(2)),
                                                            abs=1e-9)
        assert var["nats"]["mean"] == pytest.approx(uni["nats"]["mean"] + 3.0, abs=1e-9)

    # fitted to another score checkpoint: said on screen and in the summary (the bound holds for any q)
    monkeypatch.setattr(fake, "score_step", 5)
    capsys.readouterr()
    assert main(common + ["--dequant", "variational"]) == 0
    assert "fitted to score checkpoint 5, not to step 0 evaluated here" in capsys.readouterr().out
    with open(os.path.join(digits_workdir, "eval_step0_variational_limit8_bound+vlb.json")) as f:
        assert json.load(f)["dequantizer"]["fitted_to_score_step"] == 5
    monkeypatch.setattr(fake, "damaged", True)
    assert main(common + ["--dequant", "variational"]) == 2
    assert "error: --dequant variational: " in capsys.readouterr().err
    monkeypatch.setattr(fake, "damaged", False)

    capsys.readouterr()
    monkeypatch.setattr(fake, "saved", False)
    assert main(common + ["--dequant", "variational"]) == 2
    err = capsys.readouterr().err
    assert "no trained dequantiser" in err and f"python -m training dequant --workdir {digits_workdir}" in err
    monkeypatch.setitem(sys.modules, "training.dequant", None)  # as if training/dequant.py did not exist
    monkeypatch.delattr(training, "dequant")
    assert main(common + ["--dequant", "variational"]) == 2
    err = capsys.readouterr().err
    assert "--dequant variational" in err and f"python -m training dequant --workdir {digits_workdir}" in err


def test_default_summary_names_keep_other_examples_and_metrics_apart(tmp_path):
    """A quick look (--limit), the other split, another seed or metric set, or another mixture test set
    gets its own default summary file; estimator settings (tol, draws) do not change the name."""
    from training import eval_run

    base = dict(metrics=eval_run.METRICS, batch_size=128, n_probes=4, divergence="auto", tol=1e-5, bound_draws=16,
                vlb_draws=16, vlb_t="is", vlb_data="auto", dequant="uniform", seed=0, limit=None,
                num_examples=4096, data_seed=0, data_dir=None, split="test")

    def name(kind, deq="uniform", ema=True, **kw):
        opts = eval_run._Options(**dict(base, **kw))
        return os.path.basename(eval_run.summary_path(str(tmp_path), 7, deq, ema, eval_run.summary_variant(opts, kind)))

    assert name("image") == "eval_step7_uniform.json"
    assert name("image", tol=1e-3, bound_draws=4, batch_size=8) == "eval_step7_uniform.json"
    assert name("image", ema=False) == "eval_step7_uniform_raw.json"
    assert name("image", split="train") == "eval_step7_uniform_train.json"
    assert name("image", "variational", limit=100, seed=3, metrics=("vlb", "ode")) == \
        "eval_step7_variational_limit100_seed3_ode+vlb.json"
    assert name("continuous", "continuous") == "eval_step7_continuous.json"
    assert name("continuous", "continuous", split="train") == "eval_step7_continuous.json"  # no split for mixtures
    assert name("continuous", "continuous", num_examples=90, data_seed=2) == "eval_step7_continuous_n90_ds2.json"
    assert name("image", vlb_data="discrete") == "eval_step7_uniform_vlb-discrete.json"
    assert name("image", vlb_data="discrete", metrics=("ode",)) == "eval_step7_uniform_ode.json"
