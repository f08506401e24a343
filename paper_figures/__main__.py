"""``python -m paper_figures [--list] [--only NAME ...] [--out DIR] [--reduced] [--workdir DIR]``

Regenerates every figure into ``figures/`` (PNG and PDF) and writes ``figures/REPORT.md``: the theorem
table of ``python -m numerics report`` and, per figure, its picture, two sentences, and the paper and
equation it illustrates.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from tqdm import tqdm

from numerics.memory_maps import release_compiled_programs
from paper_figures import FIGURES, Context, load
from paper_figures._common import style


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m paper_figures", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="make only this figure (repeatable; NAME or module name)")
    p.add_argument("--out", type=Path, default=Path("figures"), help="output folder (default figures/)")
    p.add_argument("--reduced", action="store_true", help="small sample sizes (seconds per figure; used by the tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="training work directory for the training-run figure")
    p.add_argument("--no-theorems", action="store_true", help="skip the theorem table of numerics.report")
    return p.parse_args(argv)


def _select(only: list[str]) -> list:
    modules = [load(m) for m in FIGURES]
    if not only:
        return modules
    wanted = {w for item in only for w in item.split(",") if w}
    by_key = {m.NAME: m for m in modules} | {m.__name__.rsplit(".", 1)[1]: m for m in modules}
    unknown = sorted(wanted - by_key.keys())
    if unknown:
        raise SystemExit(f"unknown figure(s) {unknown}; choose from {[m.NAME for m in modules]} (see --list)")
    return [m for m in modules if m.NAME in wanted or m.__name__.rsplit(".", 1)[1] in wanted]


def _theorem_table(ctx: Context) -> tuple[str, dict]:
    """(markdown, report.json's data with ``failed``: the checks that do not hold) of numerics.report;
    raises if the report could not be made (the caller records that and fails the run)."""
    from numerics import report

    out = ctx.out / "theorems"
    args = ["--out", str(out), "--quiet"] + (["--n-samples", "256"] if ctx.reduced else [])
    rc = report.main(args)
    if not (out / "report.json").exists():
        raise RuntimeError(f"numerics.report exited {rc} without writing {out / 'report.json'}")
    md = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    data = json.loads((out / "report.json").read_text())
    failed = [r["name"] for r in data["results"] if not r["holds"]] if rc else []
    return md, dict(data, failed=failed)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.list:
        for name in FIGURES:
            m = load(name)
            print(f"{m.NAME:<22} {m.TITLE}  [{m.PAPER}]")
        return 0
    style()
    modules = _select(args.only)
    ctx = Context(out=args.out, reduced=args.reduced, seed=args.seed, workdir=args.workdir)
    ctx.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    sections, summaries, failures = [], {}, []
    bar = tqdm(modules, desc="figures", unit="fig")
    for m in bar:
        bar.set_postfix_str(m.NAME)
        release_compiled_programs(context=f"the figures before {m.NAME}")  # numerics.memory_maps
        t0 = time.perf_counter()
        try:
            res = m.make(ctx)
        except Exception as err:  # keep going: one broken figure must not hide the others
            failures.append(m.NAME)
            traceback.print_exc()
            sections.append(f"## {m.TITLE}\n\n**Failed:** `{type(err).__name__}: {err}`\n")
            continue
        dt = time.perf_counter() - t0
        png = [p for p in res.files if p.suffix == ".png"]
        body = [f"## {m.TITLE}", "", f"*{m.PAPER}* — `{m.NAME}`, {dt:.1f} s", ""]
        body += [f"![{m.NAME}]({p.name})" for p in png] + ["", res.caption or m.CAPTION, ""]
        body += res.report_lines
        sections.append("\n".join(body) + "\n")
        summaries[m.NAME] = res.summary
    theorem_md, theorems, table_error = "", None, None
    if not args.no_theorems and not args.only:
        tqdm.write("theorem table: running numerics.report ...")
        try:
            theorem_md, theorems = _theorem_table(ctx)
        except Exception as err:  # the figures' report is still written; the run fails below
            traceback.print_exc()
            table_error = f"{type(err).__name__}: {err}"
            theorem_md = f"**The theorem table failed:** `{table_error}`\n"
    elapsed = time.perf_counter() - start
    report = ["# Diffusion likelihood workbench — figures and theorem report", ""]
    report.append(f"Generated by `python -m paper_figures{' --reduced' if args.reduced else ''}` in {elapsed:.0f} s (seed {args.seed}).")
    report.append("")
    if theorem_md:
        report += ["# Theorem checks", "", theorem_md, ""]
    report += ["# Figures", ""] + sections
    (ctx.out / "REPORT.md").write_text("\n".join(report))
    (ctx.out / "summary.json").write_text(json.dumps(summaries, indent=2, default=float) + "\n")
    print(f"\n{len(modules) - len(failures)} of {len(modules)} figures written to {ctx.out}/ in {elapsed:.0f} s; report: {ctx.out / 'REPORT.md'}")
    for name, s in summaries.items():
        line = ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}" for k, v in list(s.items())[:4])
        print(f"  {name:<22} {line}")
    if theorems is not None:
        print(f"  theorem checks: {theorems['summary']} ({ctx.out / 'theorems' / 'report.md'})")
    bad_checks = (theorems or {}).get("failed", [])
    if failures:
        print(f"FAILED figures: {failures}", file=sys.stderr)
    if bad_checks:
        print(f"Theorem checks that do NOT hold: {bad_checks}", file=sys.stderr)
    if table_error:
        print(f"The theorem table failed: {table_error}", file=sys.stderr)
    return 1 if failures or bad_checks or table_error else 0


if __name__ == "__main__":
    sys.exit(main())
