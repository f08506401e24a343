"""paper_figures: every figure module at reduced size writes non-empty images; the report lists every theorem check."""

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from paper_figures import FIGURES, load
from paper_figures.__main__ import main


# The module fixture regenerates every figure once (a few minutes on 2 cores): the first test that
# uses it carries that time, hence the longer timeouts below. It leaves out the theorem table: that is
# numerics.report's run at the same size and seed, which tests/test_checks.py::test_report_main_small
# makes and checks (every row holds); how the runner includes it and reads its outcome is tested here
# with a stand-in report.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    code = main(["--reduced", "--out", str(out), "--no-theorems"])
    return out, code


def test_runner_succeeds(reduced_run):
    _, code = reduced_run
    assert code == 0


@pytest.mark.parametrize("module_name", FIGURES)
def test_each_figure_writes_non_empty_images(reduced_run, module_name):
    out, _ = reduced_run
    stem = module_name
    png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
    assert png.exists() and pdf.exists(), f"{module_name} did not write {png.name} and {pdf.name}"
    assert pdf.stat().st_size > 1000
    with Image.open(png) as im:
        w, h = im.size
        assert w > 300 and h > 200
        extrema = im.convert("L").getextrema()
        assert extrema[0] < extrema[1], "blank image"


def test_report_lists_every_figure(reduced_run):
    out, _ = reduced_run
    report = (out / "REPORT.md").read_text()
    for name in FIGURES:
        m = load(name)
        assert m.TITLE in report
        assert f"{name}.png" in report
        # a CAPTION may hold {fields} for the sizes the run used (FigureOutput.caption): each fixed part is
        # in the figure's section, and, unless the caption is used as it stands, no field is left unfilled
        start = report.index(f"## {m.TITLE}")
        end = report.find("\n## ", start + 1)
        section = report[start:] if end < 0 else report[start:end]
        for part in re.split(r"\{[a-z_0-9]*\}", m.CAPTION):
            assert part in section, (name, part)
        if m.CAPTION not in section:
            unfilled = [f for f in re.findall(r"\{[a-z_0-9]+\}", m.CAPTION) if f in section]
            assert not unfilled, (name, unfilled)


def test_reduced_captions_say_what_was_run(reduced_run):
    """Reduced-mode captions give the step counts the reduced runs used (not the full-size ones), and
    the digits are the held-out split (training.data.load_digits("test")), said so."""
    out, _ = reduced_run
    report = (out / "REPORT.md").read_text()
    fig7 = report[report.index("## Figure 7"):report.index("## Figure 8")]
    assert "60 CPU steps" in fig7 and "2000 CPU steps" not in fig7
    assert "training digits" not in fig7 and "held-out digits" in fig7
    assert "150 first-order CPU steps" in report[report.index("## Figure 5"):report.index("## Figure 6")]
    summary = json.loads((out / "summary.json").read_text())["training_run"]
    assert summary["loss_floor_se"] > 0 and f"{summary['loss_floor']:.4f} ± {summary['loss_floor_se']:.4f}" in report


def test_eps_offset_bound_records_the_bound_se_of_its_own_per_sample_values(monkeypatch):
    """Figure 1's left panel draws E[bound] ± 3·settings["bound_se"]: that must be the SE of the bound's
    own per-sample values (not the paired SE of bound − (−log q_0), ``stderr``), and settings["lhs_se"]
    that of −log q_0 on the same points. The per-sample values are captured where the check computes them."""
    import numpy as np

    import numerics
    from numerics.checks import song2021
    from numerics.checks.cases import data_mixture

    seen = {}
    original = song2021.eps_offset_bound

    def capture(model, sde, x0, diffusion, eps):
        out = original(model, sde, x0, diffusion, eps)
        seen["bound"], seen["x0"] = np.asarray(out.total), np.asarray(x0)
        return out

    monkeypatch.setattr(song2021, "eps_offset_bound", capture)
    q, sde, n = data_mixture(), numerics.VPSDE(t_min=1e-3), 256
    res = song2021.check_eps_offset_bound(q, q.score_fn(sde), sde, seed=3, n_samples=n, n_panels=2, order=6)
    bound, nll = seen["bound"], -np.asarray(q.log_prob(seen["x0"]))
    assert bound.shape == (n,) and nll.shape == (n,)
    se = lambda v: v.std(ddof=1) / np.sqrt(v.size)  # noqa: E731
    np.testing.assert_allclose(res.rhs, bound.mean(), rtol=1e-12)
    np.testing.assert_allclose(res.lhs, nll.mean(), rtol=1e-12)
    np.testing.assert_allclose(res.settings["bound_se"], se(bound), rtol=1e-10)
    np.testing.assert_allclose(res.settings["lhs_se"], se(nll), rtol=1e-10)
    np.testing.assert_allclose(res.stderr, se(bound - nll), rtol=1e-10)
    assert res.settings["bound_se"] != res.stderr


def test_list_and_only(tmp_path, capsys, monkeypatch):
    """--list names every figure; --only makes the one named and no other. Which figure runs is what is
    tested here (each figure's output is the fixture's job), so the selected module's ``make`` is a
    stand-in that draws one line: a real figure made again took 15–26 s of the suite."""
    import matplotlib.pyplot as plt

    from paper_figures._common import FigureOutput

    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in FIGURES:
        assert load(name).NAME in listed
    made = []

    def stand_in(ctx):
        made.append(ctx.reduced)
        fig, ax = plt.subplots()
        ax.plot([0, 1], [0, 1])
        return FigureOutput(files=ctx.save(fig, FIGURES[0]))

    monkeypatch.setattr(load(FIGURES[0]), "make", stand_in)
    for other in FIGURES[1:]:
        monkeypatch.setattr(load(other), "make", lambda ctx: pytest.fail("--only made a figure it was not asked for"))
    assert main(["--only", load(FIGURES[0]).NAME, "--reduced", "--out", str(tmp_path)]) == 0
    assert made == [True]
    assert (tmp_path / f"{FIGURES[0]}.png").exists()
    assert not (tmp_path / f"{FIGURES[1]}.png").exists()
    with pytest.raises(SystemExit, match="unknown figure"):
        main(["--only", "no_such_figure", "--out", str(tmp_path)])


def test_the_theorem_table_is_in_the_report_and_a_failed_check_fails_the_run(tmp_path, monkeypatch, capsys):
    """The runner puts numerics.report's table into REPORT.md and reads its outcome: a check that does
    not hold is named and the run exits 1 (it used to exit 0 whatever the checks said). A stand-in
    report with one failing row, and no figures, keep this test fast."""
    from numerics import report
    from paper_figures import __main__ as runner

    def fake_main(argv):
        assert argv[argv.index("--n-samples") + 1] == "256"  # --reduced: the size test_report_main_small checks
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        rows = [dict(name="kl_dynamics", holds=True), dict(name="song_thm2_tight", holds=False)]
        (out / "report.json").write_text(json.dumps(dict(summary="1/2 checks hold", results=rows)))
        (out / "report.md").write_text("| kl_dynamics | yes |\n| song_thm2_tight | NO |")
        return 1

    monkeypatch.setattr(report, "main", fake_main)
    monkeypatch.setattr(runner, "_select", lambda only: [])
    assert runner.main(["--reduced", "--out", str(tmp_path)]) == 1
    text = (tmp_path / "REPORT.md").read_text()
    assert "# Theorem checks" in text and "| song_thm2_tight | NO |" in text
    captured = capsys.readouterr()
    assert "1/2 checks hold" in captured.out and "song_thm2_tight" in captured.err


def test_a_theorem_table_that_cannot_be_made_fails_the_run_and_the_report_is_still_written(tmp_path, monkeypatch,
                                                                                           capsys):
    """numerics.report raising (a broken import or check), or exiting without its report.json, fails
    the run (exit 1, named on stderr) instead of a table quietly missing; REPORT.md is still written."""
    from numerics import report
    from paper_figures import __main__ as runner

    monkeypatch.setattr(runner, "_select", lambda only: [])

    def broken(argv):
        raise ImportError("cannot import name 'run_all' from 'numerics.checks.cases'")

    for fake, said in ((broken, "ImportError: cannot import name 'run_all'"),
                       (lambda argv: 0, "exited 0 without writing")):
        monkeypatch.setattr(report, "main", fake)
        out = tmp_path / fake.__name__
        assert runner.main(["--reduced", "--out", str(out)]) == 1
        assert said in capsys.readouterr().err
        assert "**The theorem table failed:**" in (out / "REPORT.md").read_text()

