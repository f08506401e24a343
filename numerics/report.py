"""``python -m numerics report [--out DIR] [--n-samples N] [--seed S]``: every bound and identity of
the four papers on the built-in cases (:mod:`numerics.checks.cases`), as a table (theorem, lhs, rhs,
gap ± SE, holds) on stdout, and as ``report.json`` and ``report.md`` in ``--out``.

``holds`` reads: identity — |lhs − rhs| ≤ 3 SE + atol; inequality lhs ≤ rhs — not violated beyond
3 SE ("strict": satisfied beyond 3 SE); *demonstration* ("demo", :func:`numerics.checks.engine.demonstration`)
— a bound shown NOT to apply (e.g. Song+21 Thm 2, a bound on the SDE model's NLL, exceeded by the
ODE model's NLL): lhs < rhs beyond 3 SE is the violation, and "yes (demo)" means it was shown.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numerics  # noqa: F401  (float64)
from numerics.checks.cases import run_all
from numerics.checks.engine import check_n_samples

__all__ = ["main", "format_table"]


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def format_table(results, markdown: bool = False) -> str:
    head = ["check", "paper", "kind", "lhs", "rhs", "gap ± SE", "holds"]
    rows = []
    for r in results:
        gap = f"{_fmt(r.gap)} ± {_fmt(r.stderr)}"
        if r.settings.get("demonstration"):
            holds = "yes (demo)" if r.holds else "NO (demo failed)"
        else:
            holds = ("yes" if r.holds else "NO") + (" (strict)" if r.kind == "inequality" and r.significant else "")
        rows.append([r.name, r.paper, r.kind, _fmt(r.lhs), _fmt(r.rhs), gap, holds])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in rows])


def _n_samples(text: str) -> int:
    try:
        return check_n_samples(int(text), "--n-samples")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m numerics report", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("reports"), help="folder for report.json and report.md")
    parser.add_argument("--n-samples", type=_n_samples, default=1024, help="Monte-Carlo paths per check (>= 2; default 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    results = run_all(n_samples=args.n_samples, seed=args.seed, log=None if args.quiet else print)
    elapsed = time.perf_counter() - t0
    table = format_table(results)
    print(table)
    if any(r.settings.get("demonstration") for r in results):
        print('"demo" rows: a bound shown NOT to apply; "yes (demo)" = violation shown beyond 3 SE (see settings).')
    n_ok = sum(r.holds for r in results)
    summary = f"{n_ok}/{len(results)} checks hold; {elapsed:.1f}s; n_samples={args.n_samples}, seed={args.seed}"
    print(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(
        dict(summary=summary, seconds=elapsed, n_samples=args.n_samples, seed=args.seed,
             results=[r.to_dict() for r in results]), indent=1))
    (args.out / "report.md").write_text(
        "# Bounds and identities of the four papers on exact Gaussian mixtures\n\n"
        "An identity holds when |lhs − rhs| ≤ 3 SE + atol; an inequality lhs ≤ rhs holds when it is not "
        "violated beyond 3 SE (\"strict\": satisfied beyond 3 SE). Rows marked \"demo\" are demonstrations "
        "that a bound does NOT apply (e.g. Song's Thm 2, a bound on the SDE model's NLL, applied to the ODE "
        "model): lhs ≤ rhs there is the violation, and \"yes (demo)\" means it is shown beyond 3 SE; the "
        "statement is in the record's settings (report.json).\n\n" + format_table(results, markdown=True)
        + f"\n\n{summary}\n")
    return 0 if n_ok == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
