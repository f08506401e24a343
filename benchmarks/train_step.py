"""Training-step throughput: steps/s and images/s of training/'s jitted, sharded step.

Cases (CPU-sized; printed with what was used):
  * ``mixture2d`` preset (residual MLP, 2-D mixture, batch 256);
  * ``digits`` preset (small DDPM++ on the embedded 8×8 digits, batch 64);
  * DDPM++ on CIFAR-shaped batches (3×32×32) at reduced width (nf=32, ch_mult (1,2,2,2),
    1 block per resolution, attention at 16×16, batch 16) — the full nf=128 network is GPU/TPU work.

Baseline, measured in the same run: the SAME step function executed eagerly (no ``jax.jit``:
every primitive is dispatched from Python one at a time, as in a naive op-by-op loop), with a
host sync per step. The ratio jitted/eager is what compiling the whole step into one XLA program
buys. Compile time is reported separately and excluded from both rates.

Usage: python benchmarks/train_step.py [--steps N] [--eager-steps M] [--only NAME]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

import numerics  # noqa: F401  (turns on x64, as in real use)
from training import sharding as shd
from training.configs import get_config
from training.data import make_stream
from training.networks import count_params
from training.train import init_state, jit_step, make_train_step

CASES = {
    "mixture2d": ("mixture2d", []),
    "digits": ("digits", []),
    "cifar_ddpmpp_reduced": (
        "cifar10_vp_ddpmpp_g2_is",
        ["model.nf=32", "model.num_res_blocks=1", "train.batch_size=16"],
    ),
}


class _FakeCifar:
    """CIFAR-shaped random 8-bit images (the benchmark needs no data set on disk)."""

    def __init__(self, batch, seed=0):
        from training.data import ImageDataset, ImageStream

        rng = np.random.default_rng(seed)
        ds = ImageDataset(rng.integers(0, 256, (max(4 * batch, 256), 3, 32, 32), dtype=np.uint8),
                          np.zeros(max(4 * batch, 256), np.int64))
        self.stream = ImageStream(ds, batch, seed=seed)


def bench(name: str, steps: int, eager_steps: int) -> dict:
    preset, ov = CASES[name]
    cfg = get_config(preset, ov + ["optim.warmup=0"])
    B = cfg.train.batch_size
    mesh = shd.make_mesh()
    stream = _FakeCifar(B).stream if cfg.data.name == "cifar10" else make_stream(cfg.data, B, cfg.train.seed)
    state, static, tx, schedule = init_state(cfg, tuple(stream.event_shape))
    state = jax.device_put(state, shd.replicated(mesh))
    raw_step = make_train_step(static, stream, tx, schedule, cfg, mesh)
    key = jax.device_put(jax.random.PRNGKey(0), shd.replicated(mesh))
    m = cfg.model
    desc = (f"MLP width={m.width} depth={m.depth}" if m.name == "mlp" else
            f"DDPM++ nf={m.nf} ch_mult={m.ch_mult} blocks={m.num_res_blocks} attn={m.attn_resolutions}")
    n_params = count_params(state.params)

    # jitted, sharded step; the loop only dispatches (one host sync at the end)
    step = jit_step(raw_step, mesh)
    batches = [shd.host_to_global(stream.host_batch(i), mesh, B) for i in range(steps + 1)]
    t0 = time.perf_counter()
    state, metrics = step(state, batches[0], key)
    jax.block_until_ready(metrics["loss"])
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps + 1):
        state, metrics = step(state, batches[i], key)
    jax.block_until_ready((state, metrics))
    jit_s = (time.perf_counter() - t0) / steps

    # baseline: the same step, eager (op-by-op), one host sync per step; first call warms the op caches
    st = jax.tree.map(lambda a: a.copy(), state)
    st, mt = raw_step(st, batches[0], key)
    float(mt["loss"])
    t0 = time.perf_counter()
    for i in range(1, eager_steps + 1):
        st, mt = raw_step(st, batches[i % len(batches)], key)
        float(mt["loss"])
    eager_s = (time.perf_counter() - t0) / eager_steps
    return dict(name=name, model=desc, params=n_params, batch=B, devices=mesh.devices.size, compile_s=compile_s,
                jit_steps_per_s=1 / jit_s, jit_images_per_s=B / jit_s, eager_steps_per_s=1 / eager_s,
                eager_images_per_s=B / eager_s, speedup=eager_s / jit_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eager-steps", type=int, default=3)
    p.add_argument("--only", choices=sorted(CASES), default=None)
    args = p.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.device_count()} device(s): {jax.devices()}")
    print("baseline = the same step executed eagerly (no jit), host sync each step; compile time excluded")
    rows = []
    for name in ([args.only] if args.only else list(CASES)):
        r = bench(name, args.steps, args.eager_steps)
        rows.append(r)
        print(f"\n[{r['name']}] {r['model']}, {r['params']:,} params, global batch {r['batch']} on {r['devices']} device(s)")
        print(f"  compile (first step): {r['compile_s']:.1f} s")
        print(f"  jitted sharded step : {r['jit_steps_per_s']:9.2f} steps/s  {r['jit_images_per_s']:10.1f} images/s")
        print(f"  eager baseline      : {r['eager_steps_per_s']:9.2f} steps/s  {r['eager_images_per_s']:10.1f} images/s")
        print(f"  ratio jit/eager     : {r['speedup']:.1f}x")


if __name__ == "__main__":
    main()
