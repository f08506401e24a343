"""Data for training: CIFAR-10 (official python archive), the embedded 8×8 digits, numerics mixtures.

Nothing downloads. Images are kept on the host as 8-bit integers k ∈ {0,…,255} in (N, C, H, W)
layout and are dequantized on the device exactly as in Song et al. 2021 (THEORY.md §2.9):
y = (k + u)/256 with u ~ U[0, 1)^D, then centred x = 2y − 1 ∈ [−1, 1] (``centered=True``), so
the bits/dim offset of the next issue is 8 − log₂ 2 = 7.

Data order is a pure function of (seed, step): epoch e visits the examples in the permutation
``np.random.default_rng([seed, e]).permutation(N)``; the global batch of step s is positions
[sB, (s+1)B) of the concatenated epochs; host p of P reads rows [pB/P, (p+1)B/P) of it. A resumed
run therefore reads exactly the stream an uninterrupted run reads.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zlib
from typing import Literal
from dataclasses import dataclass
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, Shaped, UInt8

__all__ = [
    "array_fingerprint",
    "ImageDataset",
    "load_cifar10",
    "load_digits",
    "quantise_digits",
    "check_pixels",
    "check_images",
    "dequantize_with",
    "dequantize",
    "ImageStream",
    "MixtureStream",
    "MIXTURES",
    "get_mixture",
    "make_stream",
]

F32 = jnp.float32


@dataclass(frozen=True)
class ImageDataset:
    """8-bit images (N, C, H, W) and integer labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be uint8 with shape (N, C, H, W); got dtype {self.images.dtype}, shape {self.images.shape}."
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},); got {self.labels.shape}.")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --- CIFAR-10 ---------------------------------------------------------------------------------

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_CIFAR_SHAPE = (3, 32, 32)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles only what the CIFAR-10 batches contain (dicts, lists, bytes and numpy arrays)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: not part of the CIFAR-10 batch format.")


def _parse_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"CIFAR-10 batch {name!r} is not a valid python-version pickle: {e} (a damaged or cut-off "
                         "file: re-download or re-extract cifar-10-python.tar.gz)") from e
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise ValueError(f"CIFAR-10 batch {name!r} lacks the b'data'/b'labels' entries of the official format.")
    data = np.asarray(d[b"data"])
    labels = np.asarray(d[b"labels"], dtype=np.int64)
    d_flat = int(np.prod(_CIFAR_SHAPE))
    if data.ndim != 2 or data.shape[1] != d_flat:
        raise ValueError(
            f"CIFAR-10 batch {name!r}: expected data of shape (N, {d_flat}) (3×32×32 images, channel planes R,G,B); "
            f"got {data.shape}."
        )
    if data.dtype != np.uint8:
        raise ValueError(f"CIFAR-10 batch {name!r}: expected uint8 pixels; got {data.dtype}.")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"CIFAR-10 batch {name!r}: {data.shape[0]} images but {labels.shape} labels.")
    return data.reshape((-1, *_CIFAR_SHAPE)), labels


def load_cifar10(path: str | os.PathLike, split: str = "train") -> ImageDataset:
    """Read CIFAR-10 from the official python archive ``cifar-10-python.tar.gz``, the folder it
    extracts to (``cifar-10-batches-py``) or a directory containing either.

    Returns uint8 images (N, 3, 32, 32) (50 000 for ``train``, 10 000 for ``test``) and labels.
    """
    if split not in _CIFAR_FILES:
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"CIFAR-10 data path {path!r} does not exist. Pass the official 'cifar-10-python.tar.gz' "
            "(https://www.cs.toronto.edu/~kriz/cifar.html) or its extracted 'cifar-10-batches-py' folder via --data-dir."
        )
    candidates = [path, os.path.join(path, _CIFAR_DIR), os.path.join(path, "cifar-10-python.tar.gz")]
    names = _CIFAR_FILES[split]
    for cand in candidates:
        if os.path.isdir(cand) and all(os.path.isfile(os.path.join(cand, n)) for n in names):
            parts = []
            for n in names:
                with open(os.path.join(cand, n), "rb") as f:
                    parts.append(_parse_batch(f.read(), n))
            return _concat(parts)
        if os.path.isfile(cand):
            parts = _tar_batches(cand, names, split)
            if parts is not None:
                return _concat(parts)
    raise FileNotFoundError(
        f"no CIFAR-10 {split} batches ({', '.join(names)}) found at {path!r}; expected the official "
        "'cifar-10-python.tar.gz' or its extracted 'cifar-10-batches-py' folder."
    )


def _tar_batches(path: str, names: list[str], split: str) -> list | None:
    """The batches ``names`` of the tar archive ``path`` (None if it is not a tar archive). A damaged
    or cut-off archive (a download or copy that stopped early) raises a ValueError saying so, in place
    of the decompressor's EOFError / zlib / tarfile error."""
    try:
        if not tarfile.is_tarfile(path):
            return None
        with tarfile.open(path, "r:*") as tar:
            members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
            missing = [n for n in names if n not in members]
            if missing:
                raise ValueError(f"archive {path!r} lacks the CIFAR-10 {split} batches {missing}.")
            return [_parse_batch(tar.extractfile(members[n]).read(), n) for n in names]
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise ValueError(
            f"CIFAR-10 archive {path!r} (--data-dir) is damaged or incomplete ({type(e).__name__}: {e}); re-download "
            "cifar-10-python.tar.gz (https://www.cs.toronto.edu/~kriz/cifar.html), or extract a good copy and pass "
            "its cifar-10-batches-py folder via --data-dir."
        ) from e


def _concat(parts) -> ImageDataset:
    return ImageDataset(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


# --- embedded digits ----------------------------------------------------------------------------


def quantise_digits(v: np.ndarray) -> np.ndarray:
    """Map the digits' 17 grey levels v ∈ {0,…,16} to 8 bits: k = ⌊255 v/16 + ½⌋ (0 ↦ 0, 16 ↦ 255)."""
    v = np.asarray(v)
    if v.min() < 0 or v.max() > 16:
        raise ValueError(f"digit pixel values must lie in 0..16; got range [{v.min()}, {v.max()}].")
    return np.floor(v.astype(np.float64) * 255.0 / 16.0 + 0.5).astype(np.uint8)


DIGITS_TEST_SIZE = 297  # the last 297 of the 1797 digits are held out: 1500 to train on


def load_digits(split: Literal["train", "test", "all"] = "all") -> ImageDataset:
    """The 8×8 handwritten digits shipped in ``training/assets/digits.npz`` as (N, 1, 8, 8) uint8:
    ``"train"`` the first 1500 (what the digits presets train on), ``"test"`` the last
    :data:`DIGITS_TEST_SIZE` = 297 (held out: what ``eval`` and the figures measure on), ``"all"``
    the 1797 in file order.

    Origin: the UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin & Kaynak 1998),
    as bundled with scikit-learn (``sklearn/datasets/data/digits.csv.gz``), licence CC BY 4.0.
    Stored as the original 0..16 values; :func:`quantise_digits` maps them to 8 bits.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all' for the digits; got {split!r}.")
    with resources.files("training.assets").joinpath("digits.npz").open("rb") as f:
        z = np.load(f)
        raw, labels = z["images_0_16"], z["labels"]
    rows = {"all": slice(None), "train": slice(None, -DIGITS_TEST_SIZE), "test": slice(-DIGITS_TEST_SIZE, None)}[split]
    return ImageDataset(quantise_digits(raw[rows])[:, None, :, :], labels[rows].astype(np.int64))


def check_pixels(k, name: str = "images_uint8"):
    """``k`` unchanged if its dtype is uint8 (8-bit pixels, so integers in 0..255), else a ValueError
    naming ``name``. Works on traced arrays (the dtype is static)."""
    dtype = getattr(k, "dtype", None)
    if dtype is None or np.dtype(dtype) != np.uint8:
        hint = (f" Check that they lie in 0..255 and convert with {name}.astype(np.uint8)."
                if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer) else "")
        raise ValueError(f"{name} must be 8-bit pixels (dtype uint8) of shape (N, C, H, W); got dtype {dtype}. "
                         f"Pass the raw integer images, not dequantised floats.{hint}")
    return k


def check_images(images_uint8, image_shape: tuple[int, ...] | None = None, name: str = "images_uint8"):
    """``images_uint8`` unchanged if it is a batch of 8-bit images: dtype uint8 (:func:`check_pixels`),
    shape (N, C, H, W) with N ≥ 1, and (C, H, W) = ``image_shape`` (the shape a dequantiser was built
    for) when given; else a ValueError
    naming ``name``. Shared by the dequantisers (training.dequant) and the bits/dim evaluations
    (training.evaluate)."""
    check_pixels(images_uint8, name)
    shape = tuple(getattr(images_uint8, "shape", ()))
    if len(shape) != 4 or shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, C, H, W) with N ≥ 1; got shape {shape}.")
    if image_shape is not None and shape[1:] != tuple(image_shape):
        raise ValueError(f"{name} has images of shape {shape[1:]}, but the dequantiser was built for {tuple(image_shape)}.")
    return images_uint8


def dequantize_with(k: Shaped[Array, "batch *event"], u: Float[ArrayLike, "..."], *,
                    centered: bool = True) -> Float[Array, "batch *event"]:
    """Song et al. 2021's dequantisation at given offsets u ∈ [0, 1) (THEORY.md §2.9): y = (k + u)/256
    and, when ``centered``, x = 2y − 1 ∈ [−1, 1); float32. ``k``: pixel values 0..255 (uint8, or
    their float32 values); ``u`` broadcasts against ``k``. The one place of this map: uniform
    (:func:`dequantize`) and variational (training.dequant) dequantisation both use it."""
    y = (k.astype(F32) + jnp.asarray(u, F32)) / 256.0
    return 2.0 * y - 1.0 if centered else y


def dequantize(
    k: UInt8[Array, "batch *event"], key: PRNGKeyArray, *, centered: bool = True
) -> Float[Array, "batch *event"]:
    """Uniform dequantization: :func:`dequantize_with` at u ~ U[0,1)^D (THEORY.md §2.9). float32.
    ``k`` must be uint8 (the raw pixels; :func:`check_pixels`)."""
    check_pixels(k, "k")
    return dequantize_with(k, jax.random.uniform(key, k.shape, dtype=F32), centered=centered)


# --- streams: what the training loop consumes --------------------------------------------------


class ImageStream:
    """Deterministic, host-sharded stream of 8-bit image batches (see module docstring)."""

    def __init__(self, dataset: ImageDataset, global_batch: int, *, seed: int, centered: bool = True,
                 process_index: int = 0, process_count: int = 1):
        if global_batch % process_count:
            raise ValueError(f"global batch {global_batch} is not divisible by the number of hosts {process_count}.")
        if len(dataset) < global_batch:
            raise ValueError(f"dataset has {len(dataset)} examples, fewer than one batch of {global_batch}.")
        self.dataset, self.global_batch, self.seed, self.centered = dataset, global_batch, int(seed), centered
        self.process_index, self.process_count = process_index, process_count
        self._perm_cache: dict[int, np.ndarray] = {}

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.dataset.image_shape

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm_cache:
            if len(self._perm_cache) > 4:
                self._perm_cache.clear()
            self._perm_cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return self._perm_cache[epoch]

    def global_indices(self, step: int) -> np.ndarray:
        """Dataset indices of the whole global batch of ``step``."""
        n = len(self.dataset)
        pos = step * self.global_batch + np.arange(self.global_batch, dtype=np.int64)
        epochs, offsets = np.divmod(pos, n)
        return np.concatenate([self._perm(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])

    def fingerprint(self) -> str:
        """:func:`array_fingerprint` of every image of the data set (what a resumed run must train on)."""
        return array_fingerprint(self.dataset.images)

    def host_batch(self, step: int) -> np.ndarray:
        """This host's rows of the global batch of ``step``: uint8 (B/P, C, H, W)."""
        per = self.global_batch // self.process_count
        idx = self.global_indices(step)[self.process_index * per : (self.process_index + 1) * per]
        return self.dataset.images[idx]

    def device_prepare(self, raw, key: PRNGKeyArray, global_batch: int):  # runs inside jit
        del global_batch
        return dequantize(raw, key, centered=self.centered)


# --- mixtures -------------------------------------------------------------------------------------

MIXTURES: dict[str, dict] = {
    # Three anisotropic, well-separated Gaussians in 2-D with unit-order scale.
    "three_blobs_2d": dict(
        weights=[0.3, 0.5, 0.2],
        means=[[-1.5, 0.0], [1.0, 1.0], [0.5, -1.5]],
        covariances=[
            [[0.20, 0.05], [0.05, 0.10]],
            [[0.10, -0.04], [-0.04, 0.15]],
            [[0.05, 0.0], [0.0, 0.30]],
        ],
    ),
    # Lu et al. 2022's 1-D "mog" toy (THEORY.md §3.8; toy.py): weights (0.3, 0.3, 0.4), means
    # (−2, −6, 4)/7, variances (0.1, 0.1, 1)/49 (their ``stds`` are variances).
    "lu_mog_1d": dict(
        weights=[0.3, 0.3, 0.4],
        means=[[-2.0 / 7.0], [-6.0 / 7.0], [4.0 / 7.0]],
        covariances=[[[0.1 / 49.0]], [[0.1 / 49.0]], [[1.0 / 49.0]]],
    ),
    # A 1-component reference (Gaussian data; closed forms in THEORY.md §6.1).
    "gaussian_2d": dict(weights=[1.0], means=[[0.7, -0.3]], covariances=[[[0.16, 0.0], [0.0, 0.5]]]),
}


def get_mixture(name: str):
    """The named :class:`numerics.GaussianMixture` (float64, as numerics builds it)."""
    import numerics

    if name not in MIXTURES:
        raise ValueError(f"unknown mixture {name!r}; choose one of {sorted(MIXTURES)}.")
    return numerics.GaussianMixture(**MIXTURES[name])


class MixtureStream:
    """Fresh samples of a numerics mixture, drawn on the device from the step key (no host data).

    The mixture is cast to float32 so that sampling runs in float32; with a partitionable PRNG
    each device draws only its own shard, so the stream is host-sharded automatically.
    """

    def __init__(self, name: str):
        mix = get_mixture(name)
        self.mixture = jax.tree.map(lambda a: a.astype(F32) if eqx_is_float(a) else a, mix)
        self.event_shape = (int(mix.dim),)

    def fingerprint(self) -> str:
        """:func:`array_fingerprint` of the mixture's parameters (the data distribution)."""
        return array_fingerprint(*jax.tree.leaves(self.mixture))

    def host_batch(self, step: int) -> None:
        return None

    def device_prepare(self, raw, key: PRNGKeyArray, global_batch: int):
        del raw
        return self.mixture.sample(key, global_batch).astype(F32)


def eqx_is_float(a) -> bool:
    return isinstance(a, jax.Array) and jnp.issubdtype(a.dtype, jnp.floating)


def event_shape_of(data_cfg) -> tuple[int, ...]:
    """The shape of one example of a :class:`training.configs.DataConfig`, without reading any data
    (so a checkpoint can be loaded where the training data is not)."""
    if data_cfg.name == "mixture":
        return (int(get_mixture(data_cfg.mixture).dim),)
    if data_cfg.name == "digits":
        return (1, 8, 8)
    if data_cfg.name == "cifar10":
        return (3, 32, 32)
    raise ValueError(f"unknown data set {data_cfg.name!r}.")


def array_fingerprint(*arrays: ArrayLike) -> str:
    """16 hex digits identifying arrays by their shapes, dtypes and bytes (SHA-1): the training data of a
    run (checked on resume) and the examples of an evaluation batch (checked before a stored result is
    reused)."""
    h = hashlib.sha1()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def make_stream(data_cfg, global_batch: int, seed: int, process_index: int = 0, process_count: int = 1):
    """Build the stream for a :class:`training.configs.DataConfig`."""
    if data_cfg.name == "mixture":
        return MixtureStream(data_cfg.mixture)
    if data_cfg.name == "digits":
        ds = load_digits(data_cfg.split)
    elif data_cfg.name == "cifar10":
        if not data_cfg.data_dir:
            raise ValueError("CIFAR-10 needs a data path: pass --data-dir DIR (the folder holding cifar-10-python.tar.gz).")
        ds = load_cifar10(data_cfg.data_dir, data_cfg.split)
    else:
        raise ValueError(f"unknown data set {data_cfg.name!r}.")
    return ImageStream(ds, global_batch, seed=seed, centered=data_cfg.centered,
                       process_index=process_index, process_count=process_count)
