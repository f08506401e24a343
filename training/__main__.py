"""Command line of the training package.

* ``python -m training train --config NAME --workdir DIR [--data-dir DIR] [--resume] [key=value ...]``
* ``python -m training list-configs [-v]``
* ``python -m training eval --workdir DIR [...]`` — bits/dim by the ODE and by the bounds (training.eval_run)
* ``python -m training sample --workdir DIR [...]`` — samples and an image grid (training.sample)
* ``python -m training dequant --workdir DIR [...]`` — train the variational dequantiser (training.dequant)
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command → module that provides ``add_arguments(parser)`` and ``run(args) -> int``
_TOOLS = {
    "eval": ("training.eval_run", "evaluate a trained model: bits/dim by the ODE and the bounds, JSON beside the checkpoints"),
    "sample": ("training.sample", "draw samples from a trained model and write an image grid"),
    "dequant": ("training.dequant", "train the variational dequantiser q(u|x) of a trained image model"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train (or resume) a score model")
    p_train.add_argument("--config", required=True, help="preset name (see list-configs)")
    p_train.add_argument("--workdir", required=True, help="checkpoints, config.json and metrics.jsonl go here")
    p_train.add_argument("--data-dir", default=None, help="CIFAR-10: cifar-10-python.tar.gz or its extracted folder")
    p_train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --workdir")
    p_train.add_argument("overrides", nargs="*", help="section.field=value, e.g. train.batch_size=64 model.nf=32")
    p_list = sub.add_parser("list-configs", help="list the presets")
    p_list.add_argument("--verbose", "-v", action="store_true", help="print each preset in full")
    tools = {}
    for name, (module, help_text) in _TOOLS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        tools[name] = mod
    args = parser.parse_args(argv)

    if args.command in tools:
        return int(tools[args.command].run(args))

    from training.configs import PRESETS, apply_overrides, config_to_json, get_config, list_configs

    if args.command == "list-configs":
        for name in list_configs():
            c = PRESETS[name]
            m = c.model
            net = f"mlp w={m.width} depth={m.depth}" if m.name == "mlp" else (
                f"ddpmpp nf={m.nf} ch_mult={m.ch_mult} blocks={m.num_res_blocks} attn={m.attn_resolutions}")
            print(f"{name:34s} {c.data.name:8s} sde={c.sde.name:6s} objective={c.loss.objective:10s} "
                  f"weighting={c.loss.weighting:7s} {net} batch={c.train.batch_size} steps={c.train.num_steps}")
            if args.verbose:
                print(config_to_json(c))
        return 0

    try:
        cfg = get_config(args.config, args.overrides)
        if args.data_dir is not None:
            cfg = apply_overrides(cfg, [f"data.data_dir={args.data_dir}"])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from training.fileio import DirectoryBusyError
    from training.train import NonFiniteLossError, train

    try:
        result = train(cfg, args.workdir, resume=args.resume)
    except (ValueError, FileNotFoundError, FileExistsError, DirectoryBusyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if result.stopped_by_signal:
        return 0
    print(f"done: step {int(result.state.step)}; checkpoints in {args.workdir}/checkpoints, metrics in {args.workdir}/metrics.jsonl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
