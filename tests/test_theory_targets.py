"""The committed theory/targets.json is what `python -m theory` produces from the current code."""

import json
import math

from theory import targets


def _compare(committed, regenerated, path="", rtol=0.0, mismatches=None):
    """(path, committed, regenerated) wherever two targets trees differ: floats of the ``affine``
    section beyond targets.AFFINE_RTOL, anything else at all."""
    mismatches = [] if mismatches is None else mismatches
    if isinstance(committed, dict) and isinstance(regenerated, dict):
        if set(committed) != set(regenerated):
            mismatches.append((path, "keys", sorted(set(committed) ^ set(regenerated))))
            return mismatches
        for k in committed:
            tol = targets.AFFINE_RTOL if (path == "" and k == "affine") else rtol
            _compare(committed[k], regenerated[k], f"{path}/{k}", tol, mismatches)
    elif isinstance(committed, float) and isinstance(regenerated, float) and rtol > 0:
        if not math.isclose(committed, regenerated, rel_tol=rtol):
            mismatches.append((path, committed, regenerated))
    elif committed != regenerated:
        mismatches.append((path, committed, regenerated))
    return mismatches


def test_committed_targets_are_fresh():
    """The committed file equals a regeneration: the exact values (sympy, 30 digits) bit for bit, the
    affine section's quadrature values (scipy DOP853) to targets.AFFINE_RTOL, since a scipy release
    may move them in the 11th digit (scipy 1.17 did)."""
    regenerated = json.loads(targets.dumps(targets.build()))
    mismatches = _compare(targets.load(), regenerated)
    assert not mismatches, f"theory/targets.json is stale (run `python -m theory` and commit it): {mismatches[:5]}"


def test_the_freshness_check_sees_a_changed_target():
    """Negative control: an affine value moved by 10 × AFFINE_RTOL and an exact value moved by one
    ulp are both reported, and nothing else."""
    committed = targets.load()
    changed = json.loads(json.dumps(committed))
    changed["affine"]["vp/dv=1/8"]["J_SM"] *= 1 + 10 * targets.AFFINE_RTOL
    changed["sde"]["vp"]["t"]["1"]["alpha"] = math.nextafter(committed["sde"]["vp"]["t"]["1"]["alpha"], math.inf)
    assert [m[0] for m in _compare(committed, changed)] == ["/affine/vp/dv=1/8/J_SM", "/sde/vp/t/1/alpha"]
    changed = json.loads(json.dumps(committed))
    changed["affine"]["vp/dv=1/8"]["J_SM"] *= 1 + 0.1 * targets.AFFINE_RTOL  # within the quadrature's tolerance
    assert _compare(committed, changed) == []


def test_targets_have_version_and_grid():
    t = targets.load()
    assert t["version"] == targets.VERSION
    assert set(t["sde"]) >= {"vp", "subvp", "ve_exact", "ve_score_sde", "logsnr_linear", "li_yan"}
