"""Typed configuration presets for likelihood-weighted score-model training.

Every CIFAR-10 row of Song, Durkan, Murray & Ermon 2021 (*Maximum Likelihood Training of
Score-Based Diffusion Models*, Table 2: VP and sub-VP × {baseline, deep} × {λ = σ², λ = g²,
λ = g² + importance sampling}) is a preset here, with the published training constants
(THEORY.md §2.10; score_sde/score_flow configs: batch 128, Adam lr 2e-4 with 5000 warm-up steps,
gradient clipping at norm 1, EMA 0.9999, 1.3M iterations for the baseline and 950k for the deep
model) and the DDPM++ (cont.) network of Song et al. 2021b (ICLR, "Score-based generative
modeling through SDEs", Table 3): nf = 128, ch_mult (1, 2, 2, 2), 4 residual blocks per
resolution (8 for "deep"), attention at 16×16, dropout 0.1, data centred to [−1, 1].
Small presets (``mixture2d``, ``digits``) run on a laptop CPU in seconds to minutes.

Overrides are ``section.field=value`` strings (``train.batch_size=64``, ``model.nf=32``); values
are parsed by the field's declared type, and an unknown key raises a ``ValueError`` listing the
valid keys. :func:`validate` then checks the values (``train.keep >= 1``, ``0 <= optim.ema_rate < 1``,
a finite ``optim.lr > 0``, ``sde.t_min < sde.T``, …) and raises a ``ValueError`` naming the key and
the fix; :func:`get_config`, :func:`apply_overrides` and ``training.train.train`` call it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Literal

__all__ = [
    "SDEConfig",
    "LossConfig",
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "TrainConfig",
    "DistributedConfig",
    "Config",
    "PRESETS",
    "get_config",
    "list_configs",
    "apply_overrides",
    "validate",
    "config_to_dict",
]


@dataclass(frozen=True)
class SDEConfig:
    """Forward SDE (numerics.sde). ``t_min=None`` uses the SDE's default (VP 1e-5, sub-VP 1e-2, VDM 0).

    ``vdm``: the variance-preserving :class:`numerics.LogSNRSDE` of a γ(t) = −log SNR schedule
    (Kingma et al. 2021, Eq. 3–4): ``schedule`` "learned" (:class:`numerics.vdm.MonotoneGamma` with
    ``schedule_features`` hidden units, its endpoints "learned" or "fixed"), "linear" or "cosine";
    γ(0) = ``gamma_min``, γ(1) = ``gamma_max`` at initialisation.
    """

    name: Literal["vp", "subvp", "ve", "vdm"] = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    ve_kernel: Literal["exact", "score_sde"] = "exact"
    t_min: float | None = None
    T: float = 1.0
    schedule: Literal["learned", "linear", "cosine"] = "learned"
    gamma_min: float = -13.3
    gamma_max: float = 5.0
    endpoints: Literal["learned", "fixed"] = "learned"
    schedule_features: int = 1024


@dataclass(frozen=True)
class LossConfig:
    """The training objective (training.objectives).

    * ``dsm``: weighted denoising score matching of Song et al. 2021 (numerics.losses) with
      ``weighting`` ``sigma2`` (λ = σ²), ``g2`` (λ = g²) or ``g2_is`` (λ = g², importance-sampled t).
    * ``high_order``: Lu et al. 2022's L1 + w2·L2 + w3·L3 (numerics.high_order) up to ``order`` (2 or 3),
      ``order_weights`` (w1, w2, w3), ``estimator`` "exact" (small D) or "hutchinson" with ``n_probes``.
      Usually fine-tuned from a first-order run (``train.init_from``).
    * ``vdm``: VDM's continuous-time −VLB (numerics.vdm.vdm_loss; needs ``sde.name=vdm``) with
      ``antithetic`` t and, when ``variance_gradient``, the variance-minimising gradient for the
      schedule's interior (Kingma et al. 2021 App. I.2). ``vdm_data``: "discrete" (8-bit images,
      VDM's discrete decoder), "continuous" (Gaussian decoder) or "auto" (discrete for images).
    """

    objective: Literal["dsm", "high_order", "vdm"] = "dsm"
    weighting: Literal["sigma2", "g2", "g2_is"] = "g2_is"
    order: int = 2
    order_weights: tuple[float, ...] = (1.0, 1.0, 1.0)
    estimator: Literal["exact", "hutchinson"] = "hutchinson"
    n_probes: int = 1
    antithetic: bool = True
    variance_gradient: bool = True
    vdm_data: Literal["auto", "continuous", "discrete"] = "auto"


@dataclass(frozen=True)
class ModelConfig:
    """Score network; both networks predict the noise ε̂ and s_θ = −ε̂/σ_t.

    ``mlp``: width, depth (residual blocks), temb_dim. ``ddpmpp``: nf, ch_mult, num_res_blocks,
    attn_resolutions, dropout, embedding ("positional" | "fourier"), fourier_scale.
    ``input_fourier``: exponents n of VDM's input Fourier features sin/cos(2^n·2π·x) concatenated
    to the input channels (Kingma et al. 2021, App. B; VDM uses (6, 7); THEORY.md §4.8).
    ``compute_dtype``: parameters are stored in float32; "bfloat16" casts them and the activations
    for the forward/backward pass (mixed precision).
    """

    name: Literal["mlp", "ddpmpp"] = "mlp"
    width: int = 128
    depth: int = 3
    temb_dim: int = 64
    nf: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    embedding: Literal["positional", "fourier"] = "positional"
    fourier_scale: float = 16.0
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    input_fourier: tuple[int, ...] = ()


@dataclass(frozen=True)
class DataConfig:
    """Data: ``mixture`` (samples of a named numerics mixture), ``digits`` (embedded 8×8 set),
    ``cifar10`` (official python archive at ``data_dir``). ``split``: the images trained on (digits:
    "train" = the first 1500, "test" = the 297 held out; training.data.load_digits). Images are
    uniformly dequantized, (k + u)/256, and centred to [−1, 1] when ``centered``."""

    name: Literal["mixture", "digits", "cifar10"] = "mixture"
    mixture: str = "three_blobs_2d"
    data_dir: str | None = None
    split: Literal["train", "test"] = "train"
    centered: bool = True


@dataclass(frozen=True)
class OptimConfig:
    """Adam with linear warm-up, global-norm clipping and parameter EMA (score_sde's optimiser);
    ``weight_decay`` > 0 makes it AdamW (VDM's optimiser).

    The EMA starts at the initial parameters and keeps ``ema_rate`` of its value per step, as in
    score_sde's and VDM's code: after n steps it still holds ``ema_rate**n`` of the random
    initialisation (0.9999 after 10k steps: 37%). ``ema_warmup=true`` uses min(ema_rate, (1+n)/(10+n))
    at step n instead (TensorFlow's ExponentialMovingAverage with ``num_updates``), so that a short run's
    EMA is an average of its recent parameters; off in every preset (the papers' settings)."""

    lr: float = 2e-4
    warmup: int = 5000
    grad_clip: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    ema_rate: float = 0.9999
    weight_decay: float = 0.0
    ema_warmup: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Loop settings. ``batch_size`` is the GLOBAL batch (split over devices and hosts).

    ``init_from``: a training work directory whose latest checkpoint initialises the parameters
    (and their EMA) of a new run — fine-tuning, e.g. high-order DSM from a first-order model
    (Lu et al. 2022, §5). Step and optimiser state start afresh."""

    batch_size: int = 128
    num_steps: int = 1_300_000
    seed: int = 0
    log_every: int = 100
    ckpt_every: int = 10_000
    keep: int = 3
    progress: bool = True
    init_from: str | None = None


@dataclass(frozen=True)
class DistributedConfig:
    """Multi-host set-up through ``jax.distributed.initialize`` (off by default).

    With ``enabled`` and no coordinator, jax auto-detects the cluster (TPU pods, SLURM)."""

    enabled: bool = False
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


@dataclass(frozen=True)
class Config:
    name: str = "custom"
    sde: SDEConfig = field(default_factory=SDEConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


# --- presets ------------------------------------------------------------------------------


def _cifar10(sde: str, deep: bool, weighting: str) -> Config:
    return Config(
        name=f"cifar10_{sde}_ddpmpp{'_deep' if deep else ''}_{weighting}",
        sde=SDEConfig(name=sde, t_min=1e-5 if sde == "vp" else 1e-2),  # THEORY.md §1.2 (smallest_time)
        loss=LossConfig(weighting=weighting),
        model=ModelConfig(
            name="ddpmpp",
            nf=128,
            ch_mult=(1, 2, 2, 2),
            num_res_blocks=8 if deep else 4,
            attn_resolutions=(16,),
            dropout=0.1,
            embedding="positional",
        ),
        data=DataConfig(name="cifar10", centered=True),
        optim=OptimConfig(lr=2e-4, warmup=5000, grad_clip=1.0, ema_rate=0.9999),
        train=TrainConfig(batch_size=128, num_steps=950_000 if deep else 1_300_000, log_every=100, ckpt_every=10_000),
    )


PRESETS: dict[str, Config] = {}
for _sde in ("vp", "subvp"):
    for _deep in (False, True):
        for _w in ("sigma2", "g2", "g2_is"):
            _c = _cifar10(_sde, _deep, _w)
            PRESETS[_c.name] = _c

PRESETS["mixture2d"] = Config(
    name="mixture2d",
    sde=SDEConfig(name="vp", t_min=1e-5),
    loss=LossConfig(weighting="g2_is"),
    model=ModelConfig(name="mlp", width=128, depth=3, temb_dim=64),
    data=DataConfig(name="mixture", mixture="three_blobs_2d"),
    optim=OptimConfig(lr=2e-3, warmup=100, grad_clip=1.0, ema_rate=0.995),
    train=TrainConfig(batch_size=256, num_steps=4000, log_every=200, ckpt_every=1000),
)

PRESETS["digits"] = Config(
    name="digits",
    sde=SDEConfig(name="vp", t_min=1e-5),
    loss=LossConfig(weighting="g2_is"),
    model=ModelConfig(
        name="ddpmpp", nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.1, embedding="positional"
    ),
    data=DataConfig(name="digits", centered=True),
    optim=OptimConfig(lr=5e-4, warmup=200, grad_clip=1.0, ema_rate=0.999),
    train=TrainConfig(batch_size=64, num_steps=3000, log_every=100, ckpt_every=500),
)


# Lu et al. 2022's 1-D mixture experiment (THEORY.md §3.7–3.8): first-order DSM (VP, λ = g² with
# importance-sampled t, as their VP runs), then fine-tuning of that model with the second- and
# third-order objectives (exact estimator in 1-D; the PyTorch toy's weights 1, 0.5, 0.1; Adam 1e-3).
# The toy trains 100k steps at batch 5000 with EMA 0.999; these presets are laptop-sized, so their
# EMA is 0.99 (an EMA of 0.999 over a few thousand steps still carries the initialisation).
# Fine-tune:  python -m training train --config lu_mog1d_second --workdir W2 train.init_from=W1
_LU_BASE = Config(
    name="lu_mog1d_first",
    sde=SDEConfig(name="vp", t_min=1e-5),
    loss=LossConfig(objective="dsm", weighting="g2_is"),
    model=ModelConfig(name="mlp", width=64, depth=2, temb_dim=32),
    data=DataConfig(name="mixture", mixture="lu_mog_1d"),
    optim=OptimConfig(lr=1e-3, warmup=100, grad_clip=1.0, ema_rate=0.99),
    train=TrainConfig(batch_size=1024, num_steps=4000, log_every=200, ckpt_every=1000),
)
PRESETS["lu_mog1d_first"] = _LU_BASE
for _order, _name in ((2, "second"), (3, "third")):
    PRESETS[f"lu_mog1d_{_name}"] = replace(
        _LU_BASE,
        name=f"lu_mog1d_{_name}",
        loss=LossConfig(objective="high_order", weighting="g2_is", order=_order, order_weights=(1.0, 0.5, 0.1),
                        estimator="exact"),
        optim=replace(_LU_BASE.optim, warmup=0),
        train=replace(_LU_BASE.train, num_steps=2000),
    )


# Lu et al. 2022 on CIFAR-10 (THEORY.md §3.7): fine-tune a first-order VP model (λ = g² + IS)
# with the second-/third-order objectives, Hutchinson estimators (one Rademacher probe), the JAX
# code's unit weights and 1/D, 1/D² normalisation; batch 128 (second) and 48 (third order).
#   python -m training train --config cifar10_vp_ddpmpp_deep_g2_is_second --workdir W2 \
#          --data-dir DATA train.init_from=W1      (W1: a cifar10_vp_ddpmpp_deep_g2_is run)
for _order, _name, _batch in ((2, "second", 128), (3, "third", 48)):
    _src = PRESETS["cifar10_vp_ddpmpp_deep_g2_is"]
    PRESETS[f"cifar10_vp_ddpmpp_deep_g2_is_{_name}"] = replace(
        _src,
        name=f"cifar10_vp_ddpmpp_deep_g2_is_{_name}",
        loss=LossConfig(objective="high_order", weighting="g2_is", order=_order, order_weights=(1.0, 1.0, 1.0),
                        estimator="hutchinson", n_probes=1),
        optim=replace(_src.optim, warmup=0),
        train=replace(_src.train, batch_size=_batch, num_steps=200_000),
    )

# VDM (Kingma et al. 2021; THEORY.md §4.6–4.8): learned monotone schedule (γ₀ = −13.3, γ₁ = 5 at
# initialisation, endpoints learned on the VLB, interior on the estimator's variance), continuous-
# time −VLB with antithetic t and the discrete decoder on 8-bit data; the network is DDPM++ without
# down-sampling (32 residual blocks of 128 channels, attention in the middle block only, dropout
# 0.1) with input Fourier features n ∈ {6, 7}; AdamW (b2 0.99, wd 0.01), lr 2e-4, EMA 0.9999,
# batch 128. VDM trains 10M steps; its conditioning on the normalised γ_t and its ε̂ = NN(z) + z
# output are not reproduced (the network sees t, which the variance gradient requires).
_VDM_SDE = SDEConfig(name="vdm", schedule="learned", gamma_min=-13.3, gamma_max=5.0, endpoints="learned", t_min=0.0)
_VDM_LOSS = LossConfig(objective="vdm", antithetic=True, variance_gradient=True, vdm_data="auto")
PRESETS["cifar10_vdm"] = Config(
    name="cifar10_vdm",
    sde=_VDM_SDE,
    loss=_VDM_LOSS,
    model=ModelConfig(name="ddpmpp", nf=128, ch_mult=(1,), num_res_blocks=32, attn_resolutions=(), dropout=0.1,
                      embedding="positional", input_fourier=(6, 7)),
    data=DataConfig(name="cifar10", centered=True),
    optim=OptimConfig(lr=2e-4, warmup=0, grad_clip=0.0, beta1=0.9, beta2=0.99, ema_rate=0.9999, weight_decay=0.01),
    train=TrainConfig(batch_size=128, num_steps=10_000_000, log_every=100, ckpt_every=10_000),
)
PRESETS["digits_vdm"] = Config(
    name="digits_vdm",
    sde=_VDM_SDE,
    loss=_VDM_LOSS,
    model=ModelConfig(name="ddpmpp", nf=32, ch_mult=(1,), num_res_blocks=4, attn_resolutions=(), dropout=0.1,
                      embedding="positional", input_fourier=(6, 7)),
    data=DataConfig(name="digits", centered=True),
    optim=OptimConfig(lr=5e-4, warmup=200, grad_clip=1.0, beta2=0.99, ema_rate=0.999, weight_decay=0.01),
    train=TrainConfig(batch_size=64, num_steps=3000, log_every=100, ckpt_every=500),
)
PRESETS["mixture2d_vdm"] = replace(
    PRESETS["mixture2d"],
    name="mixture2d_vdm",
    sde=replace(_VDM_SDE, gamma_min=-10.0, gamma_max=6.0, schedule_features=64),
    loss=_VDM_LOSS,
)


def list_configs() -> list[str]:
    return sorted(PRESETS)


def get_config(name: str, overrides: Sequence[str] = ()) -> Config:
    """The preset ``name`` with ``key=value`` overrides applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown config {name!r}; choose one of: {', '.join(list_configs())}.")
    return apply_overrides(PRESETS[name], overrides)  # validates


# --- overrides ------------------------------------------------------------------------------


def _valid_keys(cfg: Config) -> list[str]:
    keys = []
    for f in fields(cfg):
        sub = getattr(cfg, f.name)
        if dataclasses.is_dataclass(sub):
            keys += [f"{f.name}.{g.name}" for g in fields(sub)]
        else:
            keys.append(f.name)
    return keys


def _parse(raw: str, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _parse(raw, a, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{key}: cannot parse {raw!r} ({'; '.join(errors)}).")
    if origin is Literal:
        if raw not in args:
            raise ValueError(f"{key} must be one of {list(args)}; got {raw!r}.")
        return raw
    if origin is tuple:
        items = [s for s in raw.strip("()[] ").split(",") if s.strip()]
        return tuple(_parse(s.strip(), args[0], key) for s in items)
    if tp is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key} expects a boolean (true/false); got {raw!r}.")
    if tp is int:
        try:
            return int(raw.replace("_", ""))
        except ValueError:
            try:
                v = float(raw)
            except ValueError:
                raise ValueError(f"{key} expects an integer; got {raw!r}.") from None
            if v != int(v):
                raise ValueError(f"{key} expects an integer; got {raw!r}.") from None
            return int(v)
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{key} expects a number; got {raw!r}.") from None
    if tp is str:
        return raw
    raise ValueError(f"{key}: unsupported field type {tp!r}.")


def apply_overrides(cfg: Config, overrides: Sequence[str]) -> Config:
    """Apply ``section.field=value`` overrides; unknown keys and unparsable values raise ``ValueError``."""
    hints = {f.name: typing.get_type_hints(type(getattr(cfg, f.name))) for f in fields(cfg) if f.name != "name"}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. train.batch_size=64).")
        key, raw = item.split("=", 1)
        key = key.strip()
        if key == "name":
            cfg = replace(cfg, name=raw)
            continue
        section, _, name = key.partition(".")
        if section not in hints or name not in hints[section]:
            raise ValueError(f"unknown config key {key!r}. Valid keys: {', '.join(_valid_keys(cfg))}.")
        value = _parse(raw.strip(), hints[section][name], key)
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: value})})
    return validate(cfg)


# --- value checks -----------------------------------------------------------------------------


def _fail(key: str, value, must: str, fix: str):
    raise ValueError(f"{key} must be {must} (got {value!r}): {fix}.")


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_integer(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _integer(key: str, v, minimum: int, fix: str) -> None:
    if not _is_integer(v) or v < minimum:
        _fail(key, v, f"an integer >= {minimum}", fix)


def _number(key: str, v, fix: str, *, above: float | int | None = None, at_least: float | int | None = None,
            below: float | int | None = None) -> None:
    """A finite number with the given bounds (``above``/``below`` strict, ``at_least`` inclusive)."""
    conds = []
    if above is not None:
        conds.append(f"> {above:g}")
    if at_least is not None:
        conds.append(f">= {at_least:g}")
    if below is not None:
        conds.append(f"< {below:g}")
    ok = (_is_number(v) and (above is None or v > above) and (at_least is None or v >= at_least)
          and (below is None or v < below))
    if not ok:
        _fail(key, v, " and ".join(["a finite number " + conds[0], *conds[1:]]) if conds else "a finite number", fix)


def validate(cfg: Config) -> Config:
    """Check the values of ``cfg`` (the types are the dataclasses' and the overrides parser's job);
    return it unchanged, or raise a ``ValueError`` naming the first bad key, what it must be, and the
    fix, e.g. ``train.keep must be an integer >= 1 (got 0): ...``. Cross-field rules: ``sde.t_min <
    sde.T``, ``sde.gamma_min < sde.gamma_max``, ``loss.objective=vdm`` needs ``sde.name=vdm``, and
    ``data.mixture`` must name a mixture of :data:`training.data.MIXTURES` for ``data.name=mixture``."""
    t, o, m, lo, s, d, dist = cfg.train, cfg.optim, cfg.model, cfg.loss, cfg.sde, cfg.data, cfg.distributed
    # train
    _integer("train.batch_size", t.batch_size, 1, "it is the global number of examples per step")
    _integer("train.num_steps", t.num_steps, 1, "it is the step the run trains up to (a resumed run continues to it)")
    _integer("train.log_every", t.log_every, 1, "metrics are written every train.log_every steps")
    _integer("train.ckpt_every", t.ckpt_every, 1, "a checkpoint is saved every train.ckpt_every steps")
    _integer("train.keep", t.keep, 1, "it is how many checkpoints are kept, and a killed run resumes from the latest "
             "one; pass train.keep=1 or more")
    _integer("train.seed", t.seed, 0, "pass a non-negative seed")
    # optim
    _number("optim.lr", o.lr, "it is Adam's peak learning rate; e.g. optim.lr=2e-4", above=0)
    _integer("optim.warmup", o.warmup, 0, "the number of linear warm-up steps (0 = none)")
    _number("optim.grad_clip", o.grad_clip, "the global gradient norm to clip at (0 = no clipping)", at_least=0)
    _number("optim.beta1", o.beta1, "it is Adam's first-moment decay; e.g. optim.beta1=0.9", at_least=0, below=1)
    _number("optim.beta2", o.beta2, "it is Adam's second-moment decay; e.g. optim.beta2=0.999", at_least=0, below=1)
    _number("optim.eps", o.eps, "it is the offset in Adam's denominator; e.g. optim.eps=1e-8", above=0)
    _number("optim.ema_rate", o.ema_rate,
            "the EMA keeps this fraction of its old value per step; e.g. optim.ema_rate=0.9999", at_least=0, below=1)
    _number("optim.weight_decay", o.weight_decay, "AdamW's decoupled weight decay (0 = plain Adam)", at_least=0)
    # model
    _integer("model.width", m.width, 1, "the MLP's hidden width")
    _integer("model.depth", m.depth, 0, "the MLP's number of residual blocks")
    _integer("model.temb_dim", m.temb_dim, 1, "the MLP's time-embedding size")
    _integer("model.nf", m.nf, 1, "DDPM++'s base channel count (a multiple of 4)")
    if len(m.ch_mult) == 0 or not all(_is_integer(c) and c >= 1 for c in m.ch_mult):
        _fail("model.ch_mult", m.ch_mult, "a non-empty list of integers >= 1", "one channel multiplier per resolution, "
              "e.g. model.ch_mult=1,2,2,2")
    _integer("model.num_res_blocks", m.num_res_blocks, 1, "DDPM++'s residual blocks per resolution")
    if not all(_is_integer(r) and r >= 1 for r in m.attn_resolutions):
        _fail("model.attn_resolutions", m.attn_resolutions, "a list of positive resolutions",
              "e.g. model.attn_resolutions=16, or model.attn_resolutions= for none")
    _number("model.dropout", m.dropout, "the dropout probability; e.g. model.dropout=0.1", at_least=0, below=1)
    _number("model.fourier_scale", m.fourier_scale, "the scale of the Fourier time embedding", above=0)
    # loss
    if lo.order not in (2, 3):
        _fail("loss.order", lo.order, "2 or 3", "the highest order of Lu et al.'s high-order objective")
    if len(lo.order_weights) != 3 or not all(_is_number(w) and w >= 0 for w in lo.order_weights):
        _fail("loss.order_weights", lo.order_weights, "three finite numbers >= 0",
              "the weights (w1, w2, w3) of the first-, second- and third-order terms, e.g. 1,1,1")
    _integer("loss.n_probes", lo.n_probes, 1, "Hutchinson probes per example")
    if lo.objective == "vdm" and s.name != "vdm":
        _fail("sde.name", s.name, "'vdm' for loss.objective=vdm",
              "VDM's loss needs a γ = −log SNR schedule; set sde.name=vdm")
    # sde
    _number("sde.T", s.T, "the end time of the forward SDE", above=0)
    if s.t_min is not None:
        _number("sde.t_min", s.t_min, "lower sde.t_min or raise sde.T (sde.t_min=none uses the SDE's default)",
                at_least=0, below=s.T)
    _integer("sde.schedule_features", s.schedule_features, 1, "hidden units of the learned VDM schedule")
    _number("sde.gamma_max", s.gamma_max, "γ(1) of the VDM schedule; e.g. sde.gamma_max=5")
    _number("sde.gamma_min", s.gamma_min, "γ(0) of the VDM schedule must lie below γ(1) = sde.gamma_max",
            below=s.gamma_max)
    # data
    if d.name == "mixture":
        from training.data import MIXTURES

        if d.mixture not in MIXTURES:
            _fail("data.mixture", d.mixture, f"one of {sorted(MIXTURES)}",
                  "the name of a mixture of training.data.MIXTURES")
    # distributed
    if dist.num_processes is not None:
        _integer("distributed.num_processes", dist.num_processes, 1, "the number of hosts")
    if dist.process_id is not None:
        _integer("distributed.process_id", dist.process_id, 0, "this host's index, 0 .. num_processes - 1")
        if dist.num_processes is not None and dist.process_id >= dist.num_processes:
            _fail("distributed.process_id", dist.process_id, f"< distributed.num_processes = {dist.num_processes}",
                  "hosts are numbered 0 .. num_processes - 1")
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_to_json(cfg: Config) -> str:
    return json.dumps(config_to_dict(cfg), indent=2, sort_keys=True)
