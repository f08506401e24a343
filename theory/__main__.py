"""``python -m theory``: re-derive everything, check every identity, and write theory/targets.json."""

import argparse
import sys
import time

from theory import affine, li_yan2024, lu2022, sde, song2021, targets, vdm


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m theory", description=__doc__).parse_args(argv)
    t0 = time.perf_counter()
    failed = []
    for mod in (sde, song2021, vdm, lu2022, li_yan2024, affine):
        for name, ok in mod.check_identities().items():
            if not ok:
                failed.append(f"{mod.__name__}:{name}")
    if failed:
        print("identities that did not simplify to 0:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    path = targets.write()
    print(f"all identities verified; wrote {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
