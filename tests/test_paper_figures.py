"""paper_figures: every figure module at reduced size writes non-empty images; the report lists every theorem check."""

import json

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
