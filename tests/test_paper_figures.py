"""paper_figures: every figure module at reduced size writes non-empty images; the report lists every theorem check."""

import json
from pathlib import Path

import pytest
from PIL import Image

from paper_figures import FIGURES, load
from paper_figures.__main__ import main


# The module fixture regenerates every figure and the theorem table once (a few minutes on 2 cores):
# the first test that uses it carries that time, hence the longer timeouts below.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def reduced_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    code = main(["--reduced", "--out", str(out)])
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


def test_report_lists_every_figure_and_theorem_check(reduced_run):
    out, _ = reduced_run
    report = (out / "REPORT.md").read_text()
    for name in FIGURES:
        m = load(name)
        assert m.TITLE in report
        assert m.CAPTION in report
        assert f"{name}.png" in report
    checks = json.loads((out / "theorems" / "report.json").read_text())
    records = checks["results"] if isinstance(checks, dict) else checks
    assert len(records) >= 20
    for r in records:
        assert r["name"] in report, f"theorem check {r['name']} missing from REPORT.md"


def test_list_and_only(tmp_path, capsys):
    assert main(["--list"]) == 0
    listed = capsys.readouterr().out
    for name in FIGURES:
        assert load(name).NAME in listed
    assert main(["--only", load(FIGURES[0]).NAME, "--reduced", "--out", str(tmp_path)]) == 0
    assert (tmp_path / f"{FIGURES[0]}.png").exists()
    assert not (tmp_path / f"{FIGURES[1]}.png").exists()
    with pytest.raises(SystemExit, match="unknown figure"):
        main(["--only", "no_such_figure", "--out", str(tmp_path)])


def test_a_theorem_check_that_fails_is_reported_and_fails_the_run(tmp_path, monkeypatch):
    """The runner reads numerics.report's outcome: a check that does not hold is named (so that
    `python -m paper_figures` can exit 1), not buried in REPORT.md. (The real report's rows all hold:
    test_runner_succeeds.)"""
    from numerics import report
    from paper_figures import Context
    from paper_figures.__main__ import _theorem_table

    def fake_main(argv):
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        rows = [dict(name="kl_dynamics", holds=True), dict(name="song_thm2_tight", holds=False)]
        (out / "report.json").write_text(json.dumps(dict(summary="1/2 checks hold", results=rows)))
        (out / "report.md").write_text("table")
        return 1

    monkeypatch.setattr(report, "main", fake_main)
    md, data = _theorem_table(Context(out=tmp_path, reduced=True))
    assert md == "table" and data["failed"] == ["song_thm2_tight"]
