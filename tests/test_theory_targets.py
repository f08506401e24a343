"""The committed theory/targets.json is what `python -m theory` produces from the current code."""

from theory import targets


def test_committed_targets_are_fresh():
    committed = targets.PATH.read_text()
    regenerated = targets.dumps(targets.build())
    assert regenerated == committed, "theory/targets.json is stale: run `python -m theory` and commit it"


def test_targets_have_version_and_grid():
    t = targets.load()
    assert t["version"] == targets.VERSION
    assert set(t["sde"]) >= {"vp", "subvp", "ve_exact", "ve_score_sde", "logsnr_linear", "li_yan"}
