"""Sympy derivations of the four papers' results that generate the test targets.

Modules: :mod:`theory.sde` (linear-SDE kernels), :mod:`theory.song2021`, :mod:`theory.vdm`,
:mod:`theory.lu2022`, :mod:`theory.li_yan2024`; :mod:`theory.targets` evaluates them on a
parameter grid and writes/loads ``theory/targets.json`` (``python -m theory``).
"""
