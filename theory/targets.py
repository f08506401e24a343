"""Evaluate the derivations on a fixed parameter grid and write/load ``theory/targets.json``.

Every value is computed from the derived sympy expressions with exact rational inputs, evaluated
to 30 digits (``evalf(30)``/mpmath) and stored as the shortest round-trip repr of the float. The
file has a ``version`` field and no library versions, so ``python -m theory`` reproduces it byte for
byte, except the ``affine`` section: quadrature values (scipy DOP853, rtol 1e-13) that a scipy release may
move in the 11th digit. ``tests/test_theory_targets.py`` regenerates the file in memory and fails when the
committed file is stale: an exact value that differs at all, an affine value by more than ``AFFINE_RTOL``.
"""

from __future__ import annotations

import json
from pathlib import Path

import sympy as sp

from theory import affine, song2021, vdm
from theory import sde as _sde

__all__ = ["VERSION", "PATH", "build", "dumps", "write", "load"]

VERSION = 2  # 2: "affine" (wrong-model Theorem 1 / Lu (3.1)–(3.3)) section
PATH = Path(__file__).with_name("targets.json")

T_GRID = ("1e-5", "1e-3", "1e-2", "1e-1", "1/2", "1")
U_GRID = ("1/10", "1/2", "9/10")
EPS = {"vp": ("1e-5", "1e-3"), "subvp": ("1e-5", "1e-2"), "ve_exact": ("1e-5", "1e-3"), "logsnr_linear": ("1e-5",)}
GAUSS = {"mu": "7/10", "s2": "16/100"}
VDM_CASE = {"x": "11/10", "mu": "3/10", "s2": "1/4", "gamma_min": "-133/10", "gamma_max": "5"}
VDM_T = (1, 2, 4, 8, 16, 32, 64, 256, 1024)
# Wrong affine models on N(0.7, 0.16), VP defaults, [1e-3, 1] (THEORY §8 items 9–11): name → (dm, dv).
AFFINE_CASES = {"vp/dv=1/8": ("0", "1/8"), "vp/dm=3/10": ("3/10", "0"), "vp/dm=-1/5,dv=-3/10": ("-1/5", "-3/10")}
AFFINE_EPS = "1e-3"
AFFINE_DIGITS = 12  # quadrature (solve_ivp, rtol 1e-13) values, rounded to 12 significant digits
# DOP853's accumulated error (~1e-10 relative) moves with the scipy release (1.17 changed the 11th digit):
# tests/test_theory_targets.py compares this section to this relative tolerance, the exact sections bit for bit.
AFFINE_RTOL = 1e-8


def _round(v: float) -> float:
    return float(f"{v:.{AFFINE_DIGITS}g}")


def _affine() -> dict:
    out = {"data": {k: float(_q(v)) for k, v in GAUSS.items()}, "eps": float(_q(AFFINE_EPS)), "T": 1.0,
           "method": "lambdified exact integrands and moment ODEs, solve_ivp DOP853 rtol 1e-13, "
                     f"rounded to {AFFINE_DIGITS} significant digits"}
    for key, (dm, dv) in AFFINE_CASES.items():
        name = key.split("/")[0]
        spec = _sde.spec(name)
        p = tuple(float(spec.defaults[s]) for s in spec.params)
        r = affine.affine_terms(float(_q(GAUSS["mu"])), float(_q(GAUSS["s2"])), float(_q(dm)), float(_q(dv)), name, p,
                                float(_q(AFFINE_EPS)))
        out[key] = {"dm": float(_q(dm)), "dv": float(_q(dv)), **{k: _round(v) for k, v in r.items()}}
    return out


def _q(s: str) -> sp.Rational:
    return sp.Rational(s)


def _num(expr, subs) -> float:
    val = sp.N(expr.subs(subs), 30)
    if not val.is_real:
        val = sp.re(val)  # branches of log that cancel exactly leave a zero imaginary part
    return float(val)


def build() -> dict:
    out: dict = {"version": VERSION, "sde": {}, "importance": {}, "gaussian": {}, "vdm": {}}
    for name, spec in _sde.SDES.items():
        k = _sde.kernel(name)
        grid = T_GRID if name != "li_yan" else ("1e-3", "1e-1", "1/2", "9/10")
        rows = {}
        for ts in grid:
            subs = {**spec.defaults, _sde.t: _q(ts)}
            rows[ts] = {q: _num(getattr(k, q), subs) for q in ("alpha", "sigma2", "log_snr", "d_log_snr", "f", "g2")}
        out["sde"][name] = {"params": {str(p): float(v) for p, v in spec.defaults.items()}, "t": rows}
    for name, eps_list in EPS.items():
        spec, imp = _sde.spec(name), song2021.importance(name)
        for es in eps_list:
            base = {**spec.defaults, song2021.eps: _q(es), song2021.T: 1}
            rec = {"normaliser": _num(imp["normaliser"], base)}
            rec["cdf"] = {ts: _num(imp["cdf"], {**base, _sde.t: _q(ts)}) for ts in T_GRID if _q(ts) >= _q(es)}
            if imp["inverse_cdf"] is not None:
                rec["inverse_cdf"] = {us: _num(imp["inverse_cdf"], {**base, song2021.u: _q(us)}) for us in U_GRID}
            out["importance"][f"{name}/eps={es}"] = rec
    # Gaussian data N(0.7, 0.16): J_DSM(exact score; g²) over [ε, 1] and KL(q_1 ‖ π).
    dsm = song2021.dsm_constant()["value"]
    cf = song2021.gaussian_closed_forms()
    g = {song2021.mu: _q(GAUSS["mu"]), song2021.s2: _q(GAUSS["s2"])}
    for name in ("vp", "subvp", "ve_exact"):
        spec, k = _sde.spec(name), _sde.kernel(name)
        rec = {}
        for es in ("1e-5", "1e-3", "1e-2"):
            kern = {song2021.Ge: k.G.subs(_sde.t, _q(es)), song2021.GT: k.G.subs(_sde.t, 1)}
            rec[f"dsm_constant/eps={es}"] = _num(dsm.subs(kern), {**spec.defaults, **g})
        kl = cf["kl_to_prior"].subs({song2021.m_pi: 0, song2021.v_pi: spec.prior_var})
        kl = kl.subs({song2021.alpha: k.alpha, song2021.sigma2: k.sigma2}).subs(_sde.t, 1)
        rec["kl_prior/T=1"] = _num(kl, {**spec.defaults, **g})
        out["gaussian"][name] = rec
    out["gaussian"]["data"] = {key: float(_q(v)) for key, v in GAUSS.items()}
    c = {key: _q(v) for key, v in VDM_CASE.items()}
    L_inf = vdm.gaussian()["L_inf"].subs(
        {vdm.x: c["x"], vdm.mu: c["mu"], vdm.s2: c["s2"], vdm.vmin: sp.exp(-c["gamma_max"]), vdm.vmax: sp.exp(-c["gamma_min"])}
    )
    out["vdm"] = {
        "case": {key: float(v) for key, v in c.items()},
        "L_inf": float(sp.N(L_inf, 30)),
        "L_T": {
            str(T): vdm.L_T_exact(c["x"], c["mu"], c["s2"], T, c["gamma_min"], c["gamma_max"], evalf=True) for T in VDM_T
        },
    }
    out["affine"] = _affine()
    return out


def dumps(targets: dict) -> str:
    return json.dumps(targets, sort_keys=True, indent=1) + "\n"


def write(path: Path | str = PATH) -> Path:
    path = Path(path)
    path.write_text(dumps(build()))
    return path


def load(path: Path | str = PATH) -> dict:
    return json.loads(Path(path).read_text())
