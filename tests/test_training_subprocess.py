"""Tests of training/ that need fresh processes: the sharded step on 4 simulated CPU devices
(XLA flags must be set before jax is imported) and kill-and-resume through the CLI.

Subprocesses share the test run's persistent XLA compilation cache (tests/conftest.py), so only the
first one compiles a program.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
from subprocess_env import REPO, subprocess_env



SHARDED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import numerics
    from training.configs import get_config
    from training.data import make_stream
    from training.train import build_sde, init_state, make_train_step, jit_step
    from training import sharding as shd

    assert jax.device_count() == 4, jax.devices()
    out = {}
    cases = {
        "mixture_mlp": ["model.width=32", "model.depth=1", "train.batch_size=16"],
        "digits_ddpmpp": ["model.nf=8", "model.ch_mult=1", "model.num_res_blocks=1", "model.attn_resolutions=",
                          "train.batch_size=8"],
    }
    for name, ov in cases.items():
        cfg = get_config("mixture2d" if name.startswith("mixture") else "digits", ov + ["optim.warmup=0"])
        sde = build_sde(cfg.sde)
        stream = make_stream(cfg.data, cfg.train.batch_size, cfg.train.seed)
        res = {}
        for n_dev in (1, 4):
            mesh = shd.make_mesh(jax.devices()[:n_dev])
            state, static, tx, schedule = init_state(cfg, stream.event_shape)
            state = jax.device_put(state, shd.replicated(mesh))
            jitted = jit_step(make_train_step(static, stream, tx, schedule, cfg, mesh), mesh)
            key = jax.device_put(jax.random.PRNGKey(cfg.train.seed), shd.replicated(mesh))
            raw0 = shd.host_to_global(stream.host_batch(0), mesh, cfg.train.batch_size)
            # -O0 roughly halves XLA's CPU compile time; the comparison is between two compiles anyway
            step = jitted.lower(state, raw0, key).compile({"xla_backend_optimization_level": 0})
            losses = []
            for i in range(2):
                raw = shd.host_to_global(stream.host_batch(i), mesh, cfg.train.batch_size)
                if raw is not None:
                    assert len(raw.sharding.device_set) == n_dev
                state, metrics = step(state, raw, key)
                losses.append(float(metrics["loss"]))
                gn = float(metrics["grad_norm"])
            leaves = [np.asarray(a) for a in jax.tree.leaves(state.params)]
            res[n_dev] = (losses, gn, leaves, None)
        (l1, g1, p1, _), (l4, g4, p4, _) = res[1], res[4]
        out[name] = dict(
            loss1=l1, loss4=l4, gn1=g1, gn4=g4,
            max_param_diff=max(float(np.max(np.abs(a - b))) for a, b in zip(p1, p4)),
            max_param_change=max(float(np.max(np.abs(a))) for a in p1),
            lr=cfg.optim.lr,
        )
    print("RESULT" + json.dumps(out))
    """
)


def test_sharded_step_on_4_cpu_devices_matches_one_device(tmp_path):
    """Two steps on a 4-device mesh give the loss, gradient norm and parameters of a 1-device mesh
    (same seeds), up to float32 summation order."""
    script = tmp_path / "sharded.py"
    script.write_text(SHARDED_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], env=subprocess_env(devices=4), capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")][-1]
    out = json.loads(line[len("RESULT"):])
    for name, r in out.items():
        print(name, r)
        np.testing.assert_allclose(r["loss4"], r["loss1"], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(r["gn4"], r["gn1"], rtol=1e-4, err_msg=name)
        # Adam's first steps move each parameter by about ±lr; agreement to 1e-3·lr means the
        # same update up to rounding
        assert r["max_param_diff"] < 1e-3 * r["lr"] + 1e-6, (name, r)


def _ckpt_steps(workdir) -> list[int]:
    d = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(d):
        return []
    return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _wait_for_checkpoint(proc, workdir, beyond: int, timeout: float = 240.0) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        steps = [s for s in _ckpt_steps(workdir) if s > beyond]
        if steps:
            return steps[0]
        if proc.poll() is not None:
            raise AssertionError(f"training process ended (rc={proc.returncode}) before a checkpoint beyond {beyond}: "
                                 f"{proc.stderr.read()[-3000:]}")
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared in time")


def test_kill_and_resume_reproduces_uninterrupted_run(tmp_path):
    """Run A: 1500 uninterrupted steps. Run B: SIGKILL right after its first checkpoint, resume,
    SIGTERM (saves at the current step and exits cleanly), resume to the end. The final parameters,
    EMA and optimiser state of A and B are bitwise equal (same seeds, CPU)."""
    from training.configs import get_config
    from training.train import load_state

    overrides = ["model.width=32", "model.depth=1", "train.batch_size=64", "train.num_steps=1500",
                 "train.ckpt_every=100", "train.log_every=100", "train.keep=2", "train.progress=false"]
    cmd = [sys.executable, "-m", "training", "train", "--config", "mixture2d"]
    env = subprocess_env()
    wa, wb = tmp_path / "a", tmp_path / "b"
    run_a = subprocess.Popen(cmd + ["--workdir", str(wa)] + overrides, env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_b = subprocess.Popen(cmd + ["--workdir", str(wb)] + overrides, env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = _wait_for_checkpoint(run_b, wb, 0)
    run_b.send_signal(signal.SIGKILL)
    run_b.wait(timeout=60)
    assert run_b.returncode == -signal.SIGKILL
    killed_at = max(_ckpt_steps(wb))
    assert first <= killed_at < 1500, "the killed run must not have finished"

    # resume, then stop it with SIGTERM after its next periodic checkpoint
    run_b = subprocess.Popen(cmd + ["--workdir", str(wb), "--resume"] + overrides, env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(run_b, wb, killed_at)
    run_b.send_signal(signal.SIGTERM)
    out, err = run_b.communicate(timeout=120)
    assert run_b.returncode == 0, err[-3000:]
    if "SIGTERM: saved checkpoint" in out:
        termed_at = int(out.split("SIGTERM: saved checkpoint at step ")[1].split()[0])
        assert termed_at in _ckpt_steps(wb)
        assert termed_at < 1500
    else:  # the run reached the end between the checkpoint and the signal
        assert "done: step 1500" in out

    final = subprocess.run(cmd + ["--workdir", str(wb), "--resume"] + overrides, env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    out_a, err_a = run_a.communicate(timeout=300)
    assert run_a.returncode == 0, err_a[-3000:]

    cfg = get_config("mixture2d", overrides)
    state_a, _ = load_state(cfg, wa)
    state_b, _ = load_state(cfg, wb)
    assert int(state_a.step) == int(state_b.step) == 1500
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the metrics file of B has one record per logging step, none duplicated by the resumes
    with open(wb / "metrics.jsonl") as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == list(range(100, 1501, 100))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def test_two_processes_match_one_process_and_resume(tmp_path):
    """Multi-host data parallelism for real, on CPU: two processes joined by
    ``jax.distributed.initialize`` (``distributed.*`` overrides; cross-process collectives by gloo),
    one device each, each reading its half of every global batch. Run B trains 10 steps, stops, and
    is resumed by two new processes to step 20; run A trains the same 20 steps in one process. The
    logged losses agree to float32 rounding and the final parameters and EMA to 1e-6 (the all-reduce
    sums in another order: measured 1.5e-8); metrics are written once, by process 0."""
    from training.configs import get_config
    from training.train import load_state

    common = ["--config", "mixture2d", "model.width=32", "model.depth=1", "train.batch_size=16",
              "train.ckpt_every=10", "train.log_every=5", "train.progress=false"]
    cmd = [sys.executable, "-m", "training", "train"]
    env = subprocess_env()
    wa, wb = tmp_path / "a", tmp_path / "b"

    def two_processes(steps, resume=False):
        port = _free_port()
        procs = [subprocess.Popen(cmd + ["--workdir", str(wb)] + ["--resume"] * resume + common + [steps,
            "distributed.enabled=true", f"distributed.coordinator_address=localhost:{port}",
            "distributed.num_processes=2", f"distributed.process_id={i}"],
            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-3000:]

    run_a = subprocess.Popen(cmd + ["--workdir", str(wa)] + common + ["train.num_steps=20"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    two_processes("train.num_steps=10")
    assert _ckpt_steps(wb) == [10]
    two_processes("train.num_steps=20", resume=True)
    out_a, err_a = run_a.communicate(timeout=300)
    assert run_a.returncode == 0, err_a[-3000:]

    logs = {}
    for name, w in (("a", wa), ("b", wb)):
        with open(w / "metrics.jsonl") as f:
            logs[name] = [json.loads(line) for line in f]
    assert [r["step"] for r in logs["b"]] == [r["step"] for r in logs["a"]] == [5, 10, 15, 20]
    np.testing.assert_allclose([r["loss"] for r in logs["b"]], [r["loss"] for r in logs["a"]], rtol=1e-5)

    cfg = get_config("mixture2d", common[2:] + ["train.num_steps=20"])
    state_a, _ = load_state(cfg, wa)
    state_b, _ = load_state(cfg, wb)
    assert int(state_a.step) == int(state_b.step) == 20
    for tree in ("params", "ema"):
        for a, b in zip(jax.tree.leaves(getattr(state_a, tree)), jax.tree.leaves(getattr(state_b, tree))):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6, err_msg=tree)


def test_sigterm_to_one_process_of_two_stops_both_at_the_same_checkpoint(tmp_path):
    """A two-process run (as above) where only process 1 gets SIGTERM, as when a scheduler signals the
    hosts at different moments: the processes combine their flags (training.train._any_process), so
    both save the same step (orbax's save is collective) and exit cleanly. Deciding on its own flag,
    process 1 began a save that process 0 never joined, and the run hung."""
    common = ["--config", "mixture2d", "model.width=32", "model.depth=1", "train.batch_size=16",
              "train.num_steps=1000000", "train.ckpt_every=1000000", "train.log_every=5", "train.progress=false"]
    cmd = [sys.executable, "-m", "training", "train", "--workdir", str(tmp_path)]
    port = _free_port()
    procs = [subprocess.Popen(cmd + common + ["distributed.enabled=true", f"distributed.coordinator_address=localhost:{port}",
                                              "distributed.num_processes=2", f"distributed.process_id={i}"],
                              env=subprocess_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        t0 = time.time()
        while not (tmp_path / "metrics.jsonl").is_file() or not (tmp_path / "metrics.jsonl").read_text():
            assert all(p.poll() is None for p in procs), [p.communicate()[1][-3000:] for p in procs if p.poll() is not None]
            assert time.time() - t0 < 240, "the two processes logged no step in time"
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGTERM)  # both are in the training loop: process 0 logged step 5
        outs = [p.communicate(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        raise AssertionError("the processes did not stop together after SIGTERM to process 1 (hung in a save?)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    steps = _ckpt_steps(tmp_path)
    assert len(steps) == 1 and steps[0] >= 5, steps
    assert f"SIGTERM: saved checkpoint at step {steps[0]}" in outs[0][0]
