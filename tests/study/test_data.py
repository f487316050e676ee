"""study.data: real on-disk formats read through torchvision, fixed splits, device batches."""

from __future__ import annotations

import os
import pickle
import struct

import dataclasses

import numpy as np
import pytest
import scipy.io
import torch

from study.config import TrainConfig
from study.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetError,
    DatasetWarning,
    DeviceData,
    augment_batch,
    clear_cache,
    dataset_names,
    eval_batches,
    load_data,
    normalize,
    train_batches,
)


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


# ---------------------------------------------------------------------------
# fake datasets in the official formats


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), as the official CIFAR pickles were made by
    cPickle; torchvision reads them with encoding="latin1", which turns those into `str`."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def _dump_py2(obj, path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _coded_images(start: int, n: int, rng) -> np.ndarray:
    """Random uint8 images [n, 3, 32, 32] whose first two pixels encode the global index."""
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    idx = np.arange(start, start + n)
    x[:, 0, 0, 0], x[:, 0, 0, 1] = idx // 256, idx % 256
    return x


def _decode(x: torch.Tensor) -> np.ndarray:
    x = x.cpu().numpy().astype(np.int64)
    return x[:, 0, 0, 0] * 256 + x[:, 0, 0, 1]


def _label(idx, k):
    return (np.asarray(idx) * 7) % k


def write_cifar(root, kind: str = "cifar10", per_batch: int = 20, n_test: int = 20):
    """Returns (train images, test images) as written; labels follow _label(index)."""
    rng = np.random.default_rng(0)
    k = 10 if kind == "cifar10" else 100
    folder = root / ("cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True)
    n_batches = 5 if kind == "cifar10" else 1
    per_batch = per_batch if kind == "cifar10" else per_batch * 10
    train = _coded_images(0, per_batch * n_batches, rng)
    test = _coded_images(10_000, n_test, rng)

    def entry(x, start):
        labels = [int(v) for v in _label(np.arange(start, start + len(x)), k)]
        d = {b"data": x.reshape(len(x), 3072), b"batch_label": b"fake", b"filenames": [b"f.png"] * len(x)}
        if kind == "cifar10":
            d[b"labels"] = labels
        else:
            d[b"fine_labels"], d[b"coarse_labels"] = labels, [v // 5 for v in labels]
        return d

    if kind == "cifar10":
        for b in range(5):
            part = train[b * per_batch:(b + 1) * per_batch]
            _dump_py2(entry(part, b * per_batch), folder / f"data_batch_{b + 1}")
        _dump_py2(entry(test, 10_000), folder / "test_batch")
        _dump_py2({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072},
                  folder / "batches.meta")
    else:
        _dump_py2(entry(train, 0), folder / "train")
        _dump_py2(entry(test, 10_000), folder / "test")
        _dump_py2({b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                   b"coarse_label_names": [f"c{i}".encode() for i in range(20)]}, folder / "meta")
    return train, test


def write_svhn(root, n_train: int = 60, n_test: int = 20):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for split, start, n in (("train", 0, n_train), ("test", 10_000, n_test)):
        x = _coded_images(start, n, rng)
        y = _label(np.arange(start, start + n), 10)
        y_file = np.where(y == 0, 10, y).astype(np.uint8).reshape(n, 1)  # SVHN stores digit 0 as 10
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y_file})
        out.append(x)
    return out


def _check_split(data: DeviceData, train_written, test_written, k, n_val):
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.train_x.shape[1:] == (3, 32, 32) and data.in_channels == 3 and data.num_classes == k
    assert len(data.val_y) == n_val and len(data.train_y) == len(train_written) - n_val
    tr, va, te = _decode(data.train_x), _decode(data.val_x), _decode(data.test_x)
    assert set(tr).isdisjoint(va)
    assert sorted(np.concatenate([tr, va])) == list(range(len(train_written)))
    # images arrive intact in NCHW order and each label belongs to its image
    np.testing.assert_array_equal(data.train_x.numpy(), train_written[tr])
    np.testing.assert_array_equal(data.val_x.numpy(), train_written[va])
    np.testing.assert_array_equal(data.train_y.numpy(), _label(tr, k))
    np.testing.assert_array_equal(data.val_y.numpy(), _label(va, k))
    np.testing.assert_array_equal(te, np.arange(10_000, 10_000 + len(test_written)))
    np.testing.assert_array_equal(data.test_x.numpy(), test_written)
    np.testing.assert_array_equal(data.test_y.numpy(), _label(te, k))


def test_cifar10_real_format(tmp_path):
    train, test = write_cifar(tmp_path)
    with pytest.warns(DatasetWarning, match="md5"):  # fakes differ from the official release
        data = load_data("cifar10", tmp_path, val_size=0.1)
    _check_split(data, train, test, 10, 10)
    assert data.augment == "crop_flip" and data.name == "cifar10"
    # per-class stratified: 100 images over 10 classes -> one val image per class
    assert sorted(data.val_y.tolist()) == list(range(10))
    # the split is fixed: a fresh read with the global RNGs moved gives the same validation images
    clear_cache()
    torch.manual_seed(123), np.random.seed(123)
    with pytest.warns(DatasetWarning):
        again = load_data("cifar10", str(tmp_path), val_size=10)
    assert torch.equal(again.val_x, data.val_x) and torch.equal(again.train_y, data.train_y)


def test_cifar100_real_format(tmp_path):
    train, test = write_cifar(tmp_path, "cifar100", per_batch=20, n_test=30)  # 200 train images
    with pytest.warns(DatasetWarning):
        data = load_data("cifar100", tmp_path, val_size=50)
    _check_split(data, train, test, 100, 50)
    assert data.augment == "crop_flip"


def test_svhn_real_format(tmp_path):
    train, test = write_svhn(tmp_path / "svhn")
    with pytest.warns(DatasetWarning):
        data = load_data("svhn", tmp_path / "svhn", val_size=0.25)
    _check_split(data, train, test, 10, 15)
    assert data.augment == "crop"
    assert (data.train_y == 0).any()  # label 10 in the file means digit 0


def test_cache_reads_disk_once(tmp_path):
    write_cifar(tmp_path)
    with pytest.warns(DatasetWarning):
        first = load_data("cifar10", tmp_path)
    for f in (tmp_path / "cifar-10-batches-py").iterdir():
        f.unlink()
    second = load_data("cifar10", str(tmp_path) + os.sep)  # same root, other spelling
    assert torch.equal(first.train_x, second.train_x)
    second.train_x.zero_()  # callers get copies, never the cached tensors
    assert torch.equal(load_data("cifar10", tmp_path).train_x, first.train_x)


@pytest.mark.parametrize("kind", ["cifar10", "cifar100", "svhn"])
def test_missing_root_and_file(tmp_path, kind):
    with pytest.raises(DatasetError, match="data_root"):
        load_data(kind)
    with pytest.raises(DatasetError, match="download=True") as e:
        load_data(kind, tmp_path / "nowhere")
    assert "nowhere" in str(e.value)
    (write_svhn if kind == "svhn" else (lambda r: write_cifar(r, kind)))(tmp_path)
    victim = {"cifar10": "cifar-10-batches-py/test_batch", "cifar100": "cifar-100-python/meta",
              "svhn": "test_32x32.mat"}[kind]
    (tmp_path / victim).unlink()
    with pytest.raises(DatasetError) as e:
        load_data(kind, tmp_path)
    msg = str(e.value)
    assert victim in msg and str(tmp_path) in msg and "download=True" in msg
    expected = {"cifar10": "data_batch_5", "cifar100": "cifar-100-python/train", "svhn": "train_32x32.mat"}[kind]
    assert expected in msg  # lists every expected file, not only the missing one
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("kind,victim", [("cifar10", "cifar-10-batches-py/data_batch_3"),
                                         ("cifar100", "cifar-100-python/train"),
                                         ("svhn", "test_32x32.mat")])
def test_corrupt_file_is_named(tmp_path, kind, victim):
    (write_svhn if kind == "svhn" else (lambda r: write_cifar(r, kind)))(tmp_path)
    (tmp_path / victim).write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(DatasetError, match="corrupt") as e:
        load_data(kind, tmp_path)
    assert str(tmp_path / victim) in str(e.value)


def test_wrong_content_is_rejected(tmp_path):
    write_cifar(tmp_path)
    _dump_py2({b"data": np.zeros((4, 100), np.uint8), b"labels": [0] * 4},
              tmp_path / "cifar-10-batches-py" / "data_batch_2")
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_data("cifar10", tmp_path)
    clear_cache()
    write_svhn(tmp_path / "s")
    scipy.io.savemat(tmp_path / "s" / "test_32x32.mat",
                     {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[3], [11]], np.uint8)})
    with pytest.raises(DatasetError, match="labels span"):
        load_data("svhn", tmp_path / "s")


def test_bad_arguments():
    with pytest.raises(ValueError, match="digits.*cifar10.*svhn.*synthetic"):
        load_data("imagenet")
    assert set(dataset_names()) == {"cifar10", "cifar100", "svhn", "digits", "synthetic"}
    for bad in (0, -1, 1.0, 0.0, 1437, True, "10"):
        with pytest.raises(ValueError, match="val_size"):
            load_data("digits", val_size=bad)
    with pytest.raises(ValueError, match="image_size"):
        load_data("cifar10", "/tmp", image_size=64)
    with pytest.raises(ValueError, match="image_size"):
        load_data("digits", image_size=0)


# ---------------------------------------------------------------------------
# digits and synthetic (offline)


def test_digits():
    data = load_data("digits", image_size=16)
    assert data.train_x.shape[1:] == (3, 16, 16) and data.train_x.dtype == torch.uint8
    assert torch.equal(data.train_x[:, 0], data.train_x[:, 2])  # grey repeated to RGB
    assert data.num_classes == 10 and set(data.train_y.tolist()) == set(range(10))
    assert data.train_x.max() == 255 and data.train_x.min() == 0
    assert len(data.test_y) == 360 and len(data.train_y) + len(data.val_y) + 360 == 1797
    assert data.augment == "crop"
    # the test set is fixed: independent of global RNG state and of the validation size
    clear_cache()
    torch.manual_seed(7), np.random.seed(7)
    other = load_data("digits", image_size=16, val_size=300)
    assert torch.equal(other.test_x, data.test_x) and torch.equal(other.test_y, data.test_y)
    assert len(other.val_y) == 300
    assert torch.bincount(data.test_y).min() >= 35  # stratified: ~36 per class
    assert load_data("digits").train_x.shape[1:] == (3, 32, 32)


def test_synthetic_is_learnable():
    data = load_data("synthetic", synthetic_size=500, image_size=16)
    assert data.train_x.shape[1:] == (3, 16, 16) and len(data.train_y) + len(data.val_y) == 500
    assert data.num_classes == 10 and data.augment == "crop_flip"
    # class-mean colours separate the classes: nearest class-mean colour classifies the test set
    colour = lambda x: x.float().mean(dim=(2, 3))  # noqa: E731
    means = torch.stack([colour(data.train_x[data.train_y == c]).mean(0) for c in range(10)])
    pred = torch.cdist(colour(data.test_x), means).argmin(1)
    assert (pred == data.test_y).float().mean() > 0.9


def test_normalisation_zero_mean_unit_std():
    data = load_data("digits")
    x = normalize(data.train_x, data.mean, data.std)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)
    assert data.mean.dtype == torch.float32 and data.mean.shape == (3,)


# ---------------------------------------------------------------------------
# augmentation and batches


def _windows(img: torch.Tensor, pad: int = 4):
    """Every (dy, dx, flip) window of the zero-padded image, by a slow loop (reference)."""
    c, h, w = img.shape
    padded = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            win = padded[:, dy:dy + h, dx:dx + w]
            yield dy, dx, False, win
            yield dy, dx, True, win.flip(-1)


def _match(out: torch.Tensor, img: torch.Tensor, pad: int = 4):
    return [(dy, dx, f) for dy, dx, f, win in _windows(img, pad) if torch.equal(win, out)]


@pytest.mark.parametrize("mode", ["crop", "crop_flip"])
def test_augment_is_a_window_of_the_padded_input(mode):
    x = torch.randint(1, 256, (48, 3, 30, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, mode, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    found = []
    for i in range(len(x)):
        matches = _match(out[i], x[i])
        assert matches, f"sample {i} is not a window of its padded input"
        found.append(matches[0])
    flips = {f for _, _, f in found}
    assert flips == ({False, True} if mode == "crop_flip" else {False})
    assert len({(dy, dx) for dy, dx, _ in found}) > 10  # offsets vary per sample
    assert torch.equal(augment_batch(x, "none", torch.Generator()), x)
    # smaller images shift in proportion (4 of 32): 16x16 digits by up to 2 pixels
    small = torch.randint(1, 256, (48, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    shifted = augment_batch(small, "crop", torch.Generator().manual_seed(3))
    offsets = {_match(shifted[i], small[i], pad=2)[0][:2] for i in range(len(small))}
    assert {dy for dy, _ in offsets} == {0, 1, 2, 3, 4} == {dx for _, dx in offsets}
    with pytest.raises(ValueError, match="augment mode"):
        augment_batch(x, "rotate", torch.Generator())


def _tiny(augment: str = "crop_flip", n: int = 40) -> DeviceData:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(1, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 5
    return DeviceData(x, y, x[:4], y[:4], x[:4], y[:4], mean=torch.full((3,), 100.0),
                      std=torch.full((3,), 50.0), num_classes=5, in_channels=3, augment=augment, name="tiny")


def test_train_batches_are_augmented_permutations():
    data = _tiny()
    batches = list(train_batches(data, 8, torch.Generator().manual_seed(0)))
    assert len(batches) == 5 and all(xb.shape == (8, 3, 8, 8) and xb.dtype == torch.float32 for xb, _ in batches)
    used, flipped = [], 0
    for xb, yb in batches:
        raw = (xb * 50.0 + 100.0).round().to(torch.uint8)  # undo normalize
        for img, label in zip(raw, yb):
            hits = [(j, m) for j in range(len(data.train_y)) for m in _match(img, data.train_x[j])]
            assert len(hits) == 1 and data.train_y[hits[0][0]] == label
            used.append(hits[0][0])
            flipped += hits[0][1][2]
    assert sorted(used) == list(range(40))  # each image once per epoch
    assert 0 < flipped < 40


def test_train_batches_determinism_and_options():
    data = _tiny()

    def epoch(seed, **kw):
        return list(train_batches(data, 8, torch.Generator().manual_seed(seed), **kw))

    a, b, c = epoch(0), epoch(0), epoch(1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    g = torch.Generator().manual_seed(0)  # consecutive epochs from one generator differ
    first, second = list(train_batches(data, 8, g)), list(train_batches(data, 8, g))
    assert not torch.equal(first[0][0], second[0][0])

    assert len(epoch(0, limit=2)) == 2
    short = list(train_batches(data, 16, torch.Generator(), drop_last=False))
    assert [len(y) for _, y in short] == [16, 16, 8]
    assert [len(y) for _, y in train_batches(data, 16, torch.Generator())] == [16, 16]
    cl = epoch(0, channels_last=True)
    assert cl[0][0].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(cl[0][0], a[0][0])
    with pytest.raises(ValueError, match="batch_size"):
        list(train_batches(data, 64, torch.Generator()))
    with pytest.raises(ValueError, match="limit"):
        list(train_batches(data, 8, torch.Generator(), limit=0))

    plain = _tiny("none")
    xs = torch.cat([x for x, _ in train_batches(plain, 8, torch.Generator().manual_seed(0))])
    raw = (xs * 50.0 + 100.0).round().to(torch.uint8)
    assert sorted(_decode_rows(raw)) == sorted(_decode_rows(plain.train_x))  # no augmentation: same images
    assert not torch.equal(raw, plain.train_x)  # but shuffled
    ys = [torch.cat([y for _, y in train_batches(plain, 8, torch.Generator().manual_seed(s))]) for s in (0, 1)]
    assert not torch.equal(ys[0], ys[1])  # the order comes from the generator


def _decode_rows(x: torch.Tensor) -> list[bytes]:
    return [bytes(r.flatten().tolist()) for r in x]


def test_eval_batches_in_order_without_augmentation():
    data = _tiny()
    out = list(eval_batches(data.train_x, data.train_y, data, 16, channels_last=True))
    assert [len(y) for _, y in out] == [16, 16, 8]
    xs = torch.cat([x for x, _ in out])
    torch.testing.assert_close(xs, normalize(data.train_x, data.mean, data.std))
    assert torch.equal(torch.cat([y for _, y in out]), data.train_y)
    assert out[0][0].is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------
# cutout, normalisation and augmentation options


def _official_cutout(img: np.ndarray, y: int, x: int, length: int, fill) -> np.ndarray:
    """The SGS code's cutout, one image at a time (reference): a hole centred at
    (y, x), rows clip(y - L//2, 0, h) : clip(y + L//2, 0, h), columns alike."""
    out = img.copy()
    h, w = img.shape[-2:]
    y1, y2 = np.clip(y - length // 2, 0, h), np.clip(y + length // 2, 0, h)
    x1, x2 = np.clip(x - length // 2, 0, w), np.clip(x + length // 2, 0, w)
    out[:, y1:y2, x1:x2] = np.asarray(fill).reshape(-1, 1, 1)
    return out


def _image_data(n: int = 64, size: int = 16) -> DeviceData:
    g = torch.Generator().manual_seed(5)
    x = torch.randint(1, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.arange(n) % 5
    # a mean with fractions, so the fill's rounding shows
    return DeviceData(x, y, x[:4], y[:4], x[:4], y[:4], mean=torch.tensor([100.4, 60.6, 30.2]),
                      std=torch.full((3,), 50.0), num_classes=5, in_channels=3, augment="crop_flip", name="img")


@pytest.mark.parametrize("length", [6, 5])
def test_cutout_is_the_official_hole_on_the_same_centres(length):
    plain = _image_data()
    cut = dataclasses.replace(plain, cutout=length)
    g_plain, g_cut = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    base = torch.cat([x for x, _ in train_batches(plain, 16, g_plain, normalized=False)])
    out = torch.cat([x for x, _ in train_batches(cut, 16, g_cut, normalized=False)])
    # the centres are the next draws after the crops and flips: replay them from the plain stream
    n, h, w = len(out), 16, 16
    cy = torch.randint(0, h, (n,), generator=g_plain)
    cx = torch.randint(0, w, (n,), generator=g_plain)
    assert torch.equal(g_plain.get_state(), g_cut.get_state())
    fill = [100, 61, 30]  # the mean, rounded
    holes = np.stack([_official_cutout(np.zeros((1, h, w), bool), int(cy[i]), int(cx[i]), length, True)[0]
                      for i in range(n)])
    for i in range(n):
        want = _official_cutout(base[i].numpy(), int(cy[i]), int(cx[i]), length, fill)
        assert np.array_equal(out[i].numpy(), want), f"image {i}, centre {(int(cy[i]), int(cx[i]))}"
    sides = {(int(m.any(1).sum()), int(m.any(0).sum())) for m in holes}
    side = 2 * (length // 2)  # the official slice: an odd length gives an even hole
    assert (side, side) in sides  # a whole hole somewhere
    assert any(r < side or c < side for r, c in sides)  # and one clipped at a border
    # normalised, the hole is the mean to within rounding, i.e. the official 0
    xs = torch.cat([x for x, _ in train_batches(cut, 16, torch.Generator().manual_seed(7))])
    assert xs.permute(1, 0, 2, 3)[:, torch.from_numpy(holes)].abs().max() <= 0.5 / 50.0 + 1e-6


def test_without_cutout_the_stream_and_batches_are_as_before():
    """cutout 0 draws nothing more: order, crops and flips are the generator's first draws,
    and two epochs leave the generator where those draws alone leave it."""
    data = _image_data()
    g = torch.Generator().manual_seed(3)
    epochs = [torch.cat([x for x, _ in train_batches(data, 16, g, normalized=False)]) for _ in range(2)]
    ref = torch.Generator().manual_seed(3)
    n, pad = len(data.train_y), 2
    for got in epochs:
        order = torch.randperm(n, generator=ref)
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=ref)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=ref)
        flip = torch.rand(n, generator=ref) < 0.5
        for i in range(n):
            padded = torch.nn.functional.pad(data.train_x[order[i]], (pad,) * 4)
            win = padded[:, dy[i]:dy[i] + 16, dx[i]:dx[i] + 16]
            assert torch.equal(got[i], win.flip(-1) if flip[i] else win)
    assert torch.equal(g.get_state(), ref.get_state())


def test_imagenet_normalization_uses_the_imagenet_constants():
    data = load_data("digits", normalization="imagenet")
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)
    torch.testing.assert_close(data.mean, torch.tensor([123.675, 116.28, 103.53]))
    torch.testing.assert_close(data.std, torch.tensor([58.395, 57.12, 57.375]))
    assert data.normalization == "imagenet" and data.mean.dtype == torch.float32
    xb, _ = next(iter(eval_batches(data.val_x, data.val_y, data, 8)))
    expected = (data.val_x[:8].double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    torch.testing.assert_close(xb.double(), expected, atol=1e-5, rtol=0)
    own = load_data("digits")
    assert own.normalization == "dataset" and not torch.allclose(own.mean, data.mean)
    assert torch.equal(own.train_x, data.train_x)  # only the statistics change


def test_augment_override_and_what_ran_is_recorded():
    assert load_data("digits").augment == "crop"  # the dataset's default
    flipped = load_data("digits", augment="crop_flip", cutout=4)
    assert (flipped.augment, flipped.cutout) == ("crop_flip", 4)
    assert "augment 'crop_flip'" in repr(flipped) and "cutout 4" in repr(flipped)
    stored = set(_decode_rows(load_data("digits").train_x))
    for mode, shifted in (("none", False), ("crop", True)):
        data = load_data("digits", augment=mode)
        xs = torch.cat([x for x, _ in train_batches(data, 32, torch.Generator().manual_seed(0), normalized=False)])
        assert (not set(_decode_rows(xs)) <= stored) == shifted, mode


@pytest.mark.parametrize("option,bad", [("cutout", -1), ("cutout", 2.5), ("augment", "rotate"),
                                        ("normalization", "imagenet21k")])
def test_bad_data_options_name_the_option(option, bad):
    from study.errors import OptionError

    # checked before any file is read: a missing root is not what fails
    with pytest.raises(OptionError, match=f"^{option}: ") as info:
        load_data("cifar10", "/nonexistent", **{option: bad})
    assert info.value.field == option
    with pytest.raises(OptionError, match=f"^{option}: "):
        TrainConfig(**{option: bad})


def test_train_hands_the_data_options_to_load_data(monkeypatch):
    from study import train as train_lib

    seen = {}

    class Seen(Exception):
        pass

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise Seen

    monkeypatch.setattr(train_lib.data_lib, "load_data", fake)
    with pytest.raises(Seen):
        train_lib.train(TrainConfig(augment="none", cutout=8, normalization="imagenet", device="cpu"))
    assert (seen["augment"], seen["cutout"], seen["normalization"]) == ("none", 8, "imagenet")


_CACHED_LOAD = r"""
import sys
from study import data
d = data.load_data("digits", val_size=0.15, image_size=12, device="cpu")
print(int("sklearn.model_selection" in sys.modules), int(d.val_y.sum()), int(d.test_y.sum()), int(d.train_x.sum()))
"""


def test_digits_and_their_splits_are_computed_once_per_machine_then_read_without_sklearn(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    runs = [subprocess.run([sys.executable, "-c", _CACHED_LOAD], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120).stdout.split() for _ in range(2)]
    assert runs[0][0] == "1" and runs[1][0] == "0", runs  # the second start imports no scikit-learn
    assert runs[0][1:] == runs[1][1:], runs  # the very same images and splits
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "resstudy").iterdir()) == ["digits", "split"]
