"""Datasets as uint8 tensors on the trial's device, augmented in whole batches.

Each dataset is read from disk once per process (a cache keyed by name, root and
image size), split into train / a FIXED validation set / test, and moved to the
device. Batches are cropped, flipped, cut out and normalised there with
vectorised indexing, never with per-sample Python (airbench style).

Splits never depend on the trial seed: the validation set (and for `digits` the
test set) is drawn with constant seeds, so every trial of a study is scored on
the same images and seeds only change initialisation and batch order.
"""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from study.cache import arrays_on_disk
from study.config import CORE, DATASET_INFO, DATASETS
from study.errors import OptionError, UserError

# Constants, not the trial seed: the held-out images are the same for every trial.
VAL_SPLIT_SEED = 20240521
DIGITS_TEST_SEED = 1797
DIGITS_TEST_FRACTION = 0.2
SYNTHETIC_SEED = 12345
PAD = 4  # pad-4 random crop of the standard CIFAR recipe (docs/methods.md), at 32x32


def crop_pad(size: int) -> int:
    """The crop padding for `size`-pixel images: the recipe's 4 of 32 (1/8) kept in
    proportion, so upscaled digits at 16x16 shift by 2 pixels, not a quarter of the image."""
    return max(1, size * PAD // 32)


_augment_choices = CORE["augment"].choices
assert _augment_choices is not None  # the option is declared with its choices
AUGMENT_MODES: tuple[str, ...] = _augment_choices
# ImageNet's channel statistics (0..1 units), which the quotient paper's SVHN code normalises with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Files each on-disk dataset needs, relative to `root` (torchvision's layout).
EXPECTED_FILES: dict[str, tuple[str, ...]] = {name: info.files for name, info in DATASET_INFO.items() if info.files}


class DatasetError(UserError, FileNotFoundError, ValueError):
    """A dataset root is missing, incomplete or holds unreadable files."""


class DatasetWarning(UserWarning):
    """The files load but differ from the official release (md5 mismatch)."""


def dataset_names() -> list[str]:
    return list(DATASETS)


@dataclass
class DeviceData:
    """One dataset, split, as uint8 images and int64 labels on the trial's device."""

    train_x: Tensor = field(repr=False)  # uint8 [N, C, H, W]
    train_y: Tensor = field(repr=False)  # int64 [N]
    val_x: Tensor = field(repr=False)
    val_y: Tensor = field(repr=False)
    test_x: Tensor = field(repr=False)
    test_y: Tensor = field(repr=False)
    mean: Tensor  # float32 [C], 0..255 units: the train split's, or ImageNet's
    std: Tensor
    num_classes: int
    in_channels: int
    augment: str
    name: str
    cutout: int = 0  # side of the square hole cut from each training image; 0: off
    normalization: str = "dataset"  # where mean/std come from: "dataset" or "imagenet"

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def __repr__(self) -> str:
        return (f"DeviceData({self.name}: train {tuple(self.train_x.shape)}, val {len(self.val_y)}, "
                f"test {len(self.test_y)}, classes {self.num_classes}, augment {self.augment!r}, "
                f"cutout {self.cutout}, normalization {self.normalization!r}, device {self.train_x.device})")


# ---------------------------------------------------------------------------
# reading from disk (once per process)


@dataclass(frozen=True)
class _Arrays:
    """CPU tensors as read from disk, before the validation split. Never mutated."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


_CACHE: dict[tuple, _Arrays] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every dataset read so far (tests; or to re-read changed files)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _lenient_classes():
    """torchvision's dataset classes with the per-file md5 check reduced to existence.

    torchvision refuses any file whose md5 differs from the official release, yet
    user copies are often re-pickled or re-saved with identical content. The
    real torchvision readers still parse the files; we validate what they return
    (shapes, label ranges) and warn (DatasetWarning) when md5s differ, so a
    non-official copy is visible rather than silently accepted or rejected.
    Downloads stay verified: CIFAR checks its archive's md5 (tgz_md5, kept), and
    SVHN's download() still reads the md5 from split_list, which we keep.
    """
    from torchvision.datasets import CIFAR10, CIFAR100, SVHN

    class LenientCIFAR10(CIFAR10):
        train_list = [[f, None] for f, _ in CIFAR10.train_list]
        test_list = [[f, None] for f, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    class LenientCIFAR100(CIFAR100):
        train_list = [[f, None] for f, _ in CIFAR100.train_list]
        test_list = [[f, None] for f, _ in CIFAR100.test_list]
        meta = {**CIFAR100.meta, "md5": None}

    class LenientSVHN(SVHN):
        def _check_integrity(self) -> bool:
            return os.path.isfile(os.path.join(self.root, self.filename))

    return {"cifar10": (LenientCIFAR10, CIFAR10), "cifar100": (LenientCIFAR100, CIFAR100),
            "svhn": (LenientSVHN, SVHN)}


def _official_md5(name: str) -> dict[str, str]:
    """Relative path -> md5 of the official release, from torchvision's class."""
    stock = _lenient_classes()[name][1]
    if name == "svhn":
        return {f: md5 for _, f, md5 in (stock.split_list["train"], stock.split_list["test"])}
    entries = stock.train_list + stock.test_list + [[stock.meta["filename"], stock.meta["md5"]]]
    return {f"{stock.base_folder}/{f}": md5 for f, md5 in entries}


def _missing_message(name: str, root: str, problem: str) -> str:
    files = ", ".join(EXPECTED_FILES[name])
    return (f"{name}: {problem}. Expected under root {root!r}: {files}. "
            f"Place the files there or pass download=True (needs internet).")


def _diagnose(name: str, root: str) -> str:
    """Name the first expected file that does not parse (the error path only)."""
    for rel in EXPECTED_FILES[name]:
        path = os.path.join(root, rel)
        try:
            if name == "svhn":
                import scipy.io as sio

                mat = sio.loadmat(path)
                x, y = mat["X"], mat["y"]
                if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or y.size != x.shape[3]:
                    return f"{path} holds X {x.shape} and y {y.shape}, expected X [32, 32, 3, n] and y [n, 1]"
            else:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                if rel.endswith("meta"):
                    continue
                data = np.asarray(entry["data"])
                labels = entry["labels"] if "labels" in entry else entry["fine_labels"]
                if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
                    return (f"{path} holds data {data.shape} with {len(labels)} labels, "
                            f"expected data [n, 3072] with n labels")
        except Exception as e:  # noqa: BLE001 - any parse failure means this file is corrupt
            return f"{path} is corrupt or not in the expected format ({type(e).__name__}: {e})"
    return "the files parse one by one but do not fit together"


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "md5").hexdigest()


def _read_torchvision(name: str, root: str, download: bool) -> _Arrays:
    if not download:
        if not os.path.isdir(root):
            raise DatasetError(_missing_message(name, root, f"root directory {root!r} does not exist"))
        missing = [f for f in EXPECTED_FILES[name] if not os.path.isfile(os.path.join(root, f))]
        if missing:
            raise DatasetError(_missing_message(name, root, f"missing file(s) {missing}"))
    lenient = _lenient_classes()[name][0]
    try:
        if name == "svhn":
            train, test = (lenient(root, split=s, download=download) for s in ("train", "test"))
            xs, ys = (train.data, test.data), (train.labels, test.labels)
        else:
            train, test = (lenient(root, train=t, download=download) for t in (True, False))
            # torchvision hands CIFAR back as NHWC; the models want NCHW.
            xs = (train.data.transpose(0, 3, 1, 2), test.data.transpose(0, 3, 1, 2))
            ys = (train.targets, test.targets)
    except DatasetError:
        raise
    except Exception as e:  # noqa: BLE001 - wrapped with the file that caused it
        missing = [f for f in EXPECTED_FILES[name] if not os.path.isfile(os.path.join(root, f))]
        problem = (f"download failed or incomplete ({type(e).__name__}: {e}); missing {missing}"
                   if missing else _diagnose(name, root))
        raise DatasetError(_missing_message(name, root, problem)) from e

    out = []
    for split, x, y in (("train", xs[0], ys[0]), ("test", xs[1], ys[1])):
        x = np.ascontiguousarray(x)
        y = np.asarray(y, dtype=np.int64).reshape(-1)
        k = DATASET_INFO[name].classes
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, 32, 32) or len(x) != len(y) or len(y) == 0:
            raise DatasetError(_missing_message(
                name, root, f"{split} split has images {x.dtype} {x.shape} and {len(y)} labels, "
                            f"expected uint8 [n, 3, 32, 32] with n >= 1 labels"))
        if y.min() < 0 or y.max() >= k:
            raise DatasetError(_missing_message(
                name, root, f"{split} labels span {y.min()}..{y.max()}, expected 0..{k - 1}"))
        out += [torch.from_numpy(x), torch.from_numpy(y)]

    differing = [rel for rel, md5 in _official_md5(name).items() if _md5(os.path.join(root, rel)) != md5]
    if differing:
        warnings.warn(f"{name} under {root!r}: {differing} differ from the official release (md5); "
                      f"results may not compare with published numbers", DatasetWarning, stacklevel=3)
    return _Arrays(*out)


def _resize_gray(images: np.ndarray, size: int) -> Tensor:
    """uint8 [N, h, w] -> uint8 [N, 3, size, size]: bilinear once at load, grey repeated to RGB."""
    x = torch.from_numpy(images).float().unsqueeze(1)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])
    return x.round().clamp_(0, 255).to(torch.uint8).repeat(1, 3, 1, 1).contiguous()


# ---------------------------------------------------------------- scikit-learn's arrays, once per machine


def _sklearn_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scikit-learn")
    except PackageNotFoundError:
        return "?"


# The digits and the fixed splits are scikit-learn's own arrays, kept in the per-machine cache
# keyed by its version (study/cache.py): its datasets and model_selection imports took seconds
# of every trial's start on a busy machine.


def _digits_arrays() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()  # bundled with scikit-learn: works offline
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    y = digits.target.astype(np.int64)
    pool, test = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_FRACTION, stratify=y,
                                  random_state=DIGITS_TEST_SEED)
    return {"images": images, "y": y, "pool": np.sort(pool), "test": np.sort(test)}


def _read_digits(image_size: int) -> _Arrays:
    d = arrays_on_disk("digits", {"sklearn": _sklearn_version(), "seed": DIGITS_TEST_SEED,
                            "fraction": DIGITS_TEST_FRACTION}, _digits_arrays)
    images, y, pool, test = d["images"], d["y"], d["pool"], d["test"]
    x = _resize_gray(images, image_size)
    return _Arrays(x[pool], torch.from_numpy(y[pool]), x[test], torch.from_numpy(y[test]))


def _read_synthetic(image_size: int, size: int) -> _Arrays:
    """Random images whose class sets the mean colour: learnable, for benchmarks and tests."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    k = DATASET_INFO["synthetic"].classes
    colours = rng.integers(40, 216, size=(k, 3)).astype(np.int16)
    n_test = max(size // 4, k)

    def make(n: int) -> tuple[Tensor, Tensor]:
        y = np.arange(n) % k  # balanced classes
        rng.shuffle(y)
        noise = rng.integers(-40, 41, size=(n, 3, image_size, image_size), dtype=np.int16)
        x = np.clip(colours[y][:, :, None, None] + noise, 0, 255).astype(np.uint8)
        return torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))

    return _Arrays(*make(size), *make(n_test))


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _arrays(name: str, root, download: bool, image_size: int | None, synthetic_size: int) -> _Arrays:
    key: tuple[Any, ...]  # what the arrays depend on
    read: Callable[[], _Arrays]
    if name in EXPECTED_FILES:
        if image_size not in (None, 32):
            raise ValueError(f"image_size={image_size!r} is not supported for {name} (its images are 32x32); "
                             f"leave image_size None (it applies to digits and synthetic)")
        if root is None:
            raise DatasetError(f"{name} needs a dataset directory: set data_root (root=) to the folder "
                               f"holding {', '.join(EXPECTED_FILES[name])}, or use dataset 'digits' offline")
        folder = os.path.abspath(os.path.expanduser(os.fspath(root)))
        key, read = (name, folder), functools.partial(_read_torchvision, name, folder, download)
    else:
        size = 32 if image_size is None else _check_int("image_size", image_size, 1)
        if name == "synthetic":
            n = _check_int("synthetic_size", synthetic_size, 2)
            key, read = (name, size, n), functools.partial(_read_synthetic, size, n)
        elif name == "digits":
            key, read = (name, size), functools.partial(_read_digits, size)
        else:  # load_dataset refuses it first
            raise ValueError(f"unknown dataset {name!r}; known datasets: {dataset_names()}")
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = read()
        return _CACHE[key]


# ---------------------------------------------------------------------------
# splitting and moving to the device


def _val_count(val_size: int | float, n: int) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float, np.integer, np.floating)):
        raise ValueError(f"val_size must be an int (images) or a float (fraction), got {val_size!r}")
    if isinstance(val_size, (float, np.floating)):
        if not 0.0 < val_size < 1.0:
            raise ValueError(f"val_size={val_size!r}: a fraction must lie in (0, 1)")
        count = max(1, round(float(val_size) * n))
    else:
        count = int(val_size)
    if not 1 <= count < n:
        raise ValueError(f"val_size={val_size!r} gives {count} validation images; with {n} training "
                         f"images it must give between 1 and {n - 1}")
    return count


def _split(y: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed split: stratified by class when every class can give one image to each side
    (scikit-learn's, kept in the per-machine cache once computed)."""
    key = {"sklearn": _sklearn_version(), "y": hashlib.sha256(np.ascontiguousarray(y).tobytes()).hexdigest(),
           "dtype": str(y.dtype), "n": len(y), "n_val": int(n_val), "seed": int(seed)}
    d = arrays_on_disk("split", key, lambda: dict(zip(("train", "val"), _split_now(y, n_val, seed))))
    return d["train"], d["val"]


def _split_now(y: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    present = np.bincount(y)
    present = present[present > 0]
    k = len(present)
    stratify = y if present.min() >= 2 and min(n_val, len(y) - n_val) >= k else None
    train, val = train_test_split(idx, test_size=n_val, stratify=stratify, random_state=seed)
    return np.sort(train), np.sort(val)


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean/std in float64, in chunks so no float copy of the whole set exists."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    squares = torch.zeros_like(total)
    for chunk in x.split(4096):
        c = chunk.to(torch.float64)
        total += c.sum(dim=(0, 2, 3))
        squares += c.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)  # constant channel: avoid /0
    return mean.float(), std.float()


def resolve_device(name: str | torch.device) -> torch.device:
    """The torch device of the `device` option's value (auto: CUDA where there is one),
    or OptionError naming a device this machine lacks."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    # torch.device also parses meta, mps, xpu, ...: the trainer supports CPU and CUDA only.
    CORE["device"].check(name)
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device: {name!r} asked for but no CUDA device is visible; allowed: auto or cpu",
                          field="device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise OptionError(f"device: {name!r} asked for but this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s); allowed: cuda:0 to cuda:{torch.cuda.device_count() - 1}, auto or cpu",
                          field="device")
    return device


def load_data(name: str, root: str | os.PathLike | None = None, *, download: bool = False,
              val_size: int | float = 0.1, image_size: int | None = None,
              device: str | torch.device = "cpu", synthetic_size: int = 2048,
              augment: str | None = None, cutout: int = 0, normalization: str = "dataset") -> DeviceData:
    """Load `name`, hold out a fixed validation split from its training set, move all to `device`.

    Real datasets (cifar10, cifar100, svhn) read torchvision's on-disk layout under
    `root`; `digits` (scikit-learn's bundled 8x8 digits) and `synthetic` need no files.
    `augment`, `cutout` and `normalization` are the training options of those names
    (study.config), checked here too and recorded on the result.
    """
    if name not in DATASET_INFO:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {dataset_names()}")
    # checked before any file is read
    augment = CORE["augment"].check(augment) or DATASET_INFO[name].augment
    cutout = CORE["cutout"].check(cutout)
    normalization = CORE["normalization"].check(normalization)
    arrays = _arrays(name, root, download, image_size, synthetic_size)
    n_val = _val_count(val_size, len(arrays.train_y))
    train_rows, val_rows = _split(arrays.train_y.numpy(), n_val, VAL_SPLIT_SEED)
    dev = resolve_device(device)
    train_idx, val_idx = torch.from_numpy(train_rows), torch.from_numpy(val_rows)
    # Indexing copies, so the cached tensors are never handed out; test is copied explicitly.
    train_x = arrays.train_x[train_idx].to(dev)
    if normalization == "imagenet":
        mean, std = (torch.tensor(v, device=dev) * 255.0 for v in (IMAGENET_MEAN, IMAGENET_STD))
    else:
        mean, std = _channel_stats(train_x)
    return DeviceData(
        train_x=train_x, train_y=arrays.train_y[train_idx].to(dev),
        val_x=arrays.train_x[val_idx].to(dev), val_y=arrays.train_y[val_idx].to(dev),
        test_x=arrays.test_x.to(dev, copy=True), test_y=arrays.test_y.to(dev, copy=True),
        mean=mean, std=std, num_classes=DATASET_INFO[name].classes, in_channels=int(train_x.shape[1]),
        augment=augment, name=name, cutout=cutout, normalization=normalization,
    )


# ---------------------------------------------------------------------------
# batches on the device


def normalize(x_uint8: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """(x - mean) / std per channel, as float32; keeps x's memory format."""
    scale = (1.0 / std).view(1, -1, 1, 1)
    return x_uint8.float().mul_(scale).sub_((mean.view(1, -1, 1, 1) * scale))


def _draw(n: int, mode: str, generator: torch.Generator, device: torch.device,
          pad: int = PAD) -> tuple[Tensor, Tensor, Tensor | None]:
    """Per-sample crop offsets and flips, drawn from `generator` on its own device."""
    g = generator.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=g).to(device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=g).to(device)
    flip = None
    if mode == "crop_flip":
        flip = (torch.rand(n, generator=generator, device=g) < 0.5).to(device)
    return dy, dx, flip


def _crop_flip(x: Tensor, dy: Tensor, dx: Tensor, flip: Tensor | None, pad: int = PAD) -> Tensor:
    """Window (dy, dx) of the zero-padded batch, mirrored where `flip`: one gather, no loop."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    hp, wp = h + 2 * pad, w + 2 * pad
    cols = torch.arange(w, device=x.device).expand(b, w)
    if flip is not None:
        cols = torch.where(flip[:, None], (w - 1) - cols, cols)  # mirror inside the window
    rows = dy[:, None] + torch.arange(h, device=x.device)  # [b, h]
    flat = (rows[:, :, None] * wp + (dx[:, None] + cols)[:, None, :]).view(b, 1, h * w)
    out = torch.gather(xp.reshape(b, c, hp * wp), 2, flat.expand(b, c, h * w))
    return out.view(b, c, h, w)


def augment_batch(x_uint8: Tensor, mode: str, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding (4 pixels at 32x32, in proportion otherwise; + horizontal
    flip in "crop_flip"), whole batch at once."""
    if mode not in AUGMENT_MODES:
        raise ValueError(f"augment mode {mode!r} unknown; allowed: {AUGMENT_MODES}")
    if mode == "none":
        return x_uint8
    pad = crop_pad(x_uint8.shape[-1])
    return _crop_flip(x_uint8, *_draw(x_uint8.shape[0], mode, generator, x_uint8.device, pad), pad)


def _draw_centres(n: int, h: int, w: int, generator: torch.Generator, device: torch.device):
    """Per-sample cutout centres, uniform over every pixel (the official cutout's)."""
    g = generator.device
    cy = torch.randint(0, h, (n,), generator=generator, device=g).to(device)
    cx = torch.randint(0, w, (n,), generator=generator, device=g).to(device)
    return cy, cx


def _cutout(x: Tensor, cy: Tensor, cx: Tensor, size: int, fill: Tensor) -> Tensor:
    """The official cutout on a whole batch: rows clip(cy - size//2, 0, h) : clip(cy + size//2, 0, h),
    columns alike, set to `fill` (uint8 [C]). The comparisons clip at the borders by themselves."""
    b, c, h, w = x.shape
    half = size // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = (rows >= (cy - half)[:, None]) & (rows < (cy + half)[:, None])  # [b, h]
    in_cols = (cols >= (cx - half)[:, None]) & (cols < (cx + half)[:, None])  # [b, w]
    hole = (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
    return torch.where(hole, fill.view(1, c, 1, 1), x)


def _to_format(x: Tensor, channels_last: bool) -> Tensor:
    # Convert the uint8 batch (1 byte/value) before the float ops, which keep the format.
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_batches(data: DeviceData, batch_size: int, generator: torch.Generator, *, drop_last: bool = True,
                  channels_last: bool = False, limit: int | None = None,
                  normalized: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
    """One epoch of shuffled, augmented, normalised training batches
    (`normalized=False`: still uint8, for a step that normalises inside its compiled graph).

    All randomness (order, crops, flips, cutout centres) comes from `generator`,
    drawn once per epoch before the first batch, so a seed fixes the epoch on any
    device. Cutout (`data.cutout` > 0) comes last: the official code cuts the
    normalised batch and fills with 0, i.e. the mean; the batch here is still
    uint8, so the hole holds the per-channel mean rounded to uint8, which
    normalises to within 0.5 / std of 0.
    """
    batch_size = _check_int("batch_size", batch_size, 1)
    if limit is not None:
        limit = _check_int("limit", limit, 1)
    n = len(data.train_y)
    batches = n // batch_size if drop_last else -(-n // batch_size)
    if batches == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {n} training images of {data.name} "
                         f"with drop_last=True: an epoch would have no batch")
    if limit is not None:
        batches = min(batches, limit)
    used = min(n, batches * batch_size)
    device = data.train_x.device
    order = torch.randperm(n, generator=generator, device=generator.device)[:used].to(device)
    pad = crop_pad(data.train_x.shape[-1])
    params = _draw(used, data.augment, generator, device, pad) if data.augment != "none" else None
    centres = fill = None
    if data.cutout > 0:
        # drawn after the crops and flips: without cutout the stream, so every batch, is as before
        h, w = data.train_x.shape[-2:]
        centres = _draw_centres(used, h, w, generator, device)
        fill = data.mean.round().clamp(0, 255).to(device=device, dtype=torch.uint8)
    for i in range(batches):
        s = slice(i * batch_size, min((i + 1) * batch_size, used))
        idx = order[s]
        x = data.train_x[idx]
        if params is not None:
            dy, dx, flip = params
            x = _crop_flip(x, dy[s], dx[s], None if flip is None else flip[s], pad)
        if centres is not None:
            assert fill is not None  # set with the centres
            x = _cutout(x, centres[0][s], centres[1][s], data.cutout, fill)
        x = _to_format(x, channels_last)
        yield (normalize(x, data.mean, data.std) if normalized else x), data.train_y[idx]


def eval_batches(x: Tensor, y: Tensor, data: DeviceData, batch_size: int, *,
                 channels_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Un-augmented normalised batches of (x, y) in order, the last one possibly short."""
    batch_size = _check_int("batch_size", batch_size, 1)
    for i in range(0, len(y), batch_size):
        xb = _to_format(x[i:i + batch_size], channels_last)
        yield normalize(xb, data.mean, data.std), y[i:i + batch_size]


__all__ = [
    "DeviceData", "DatasetError", "DatasetWarning", "EXPECTED_FILES", "augment_batch", "clear_cache",
    "dataset_names", "eval_batches", "load_data", "normalize", "train_batches",
]
