"""Tests for manidefense.datasets. They never download: MANIDEFENSE_OFFLINE=1 throughout."""

import gzip
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from manidefense import datasets

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@pytest.fixture(autouse=True)
def offline_env(monkeypatch, tmp_path):
    """Never download; look for data only in an empty tmp folder unless a test writes files."""
    monkeypatch.setenv("MANIDEFENSE_OFFLINE", "1")
    monkeypatch.setenv("MANIDEFENSE_DATA", str(tmp_path))
    # Keep the real Debian copy out of the way unless a test opts in.
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian-here")


# --------------------------------------------------------------------------- #
# Helpers writing tiny data files
# --------------------------------------------------------------------------- #


def _write(path, payload, gz):
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def _idx_images(images, magic=2051):
    n, h, w = images.shape
    return struct.pack(">IIII", magic, n, h, w) + images.astype(np.uint8).tobytes()


def _idx_labels(labels, magic=2049):
    return struct.pack(">II", magic, len(labels)) + np.asarray(labels, np.uint8).tobytes()


def _tiny_images(n, offset):
    """n 28x28 uint8 images with distinct, known pixel values."""
    base = np.arange(n * 28 * 28, dtype=np.int64).reshape(n, 28, 28)
    return ((base * 7 + offset) % 256).astype(np.uint8)


def _write_idx_split(folder, split, images, labels, gz):
    folder.mkdir(parents=True, exist_ok=True)
    img_name, lbl_name = IDX_NAMES[split]
    _write(folder / img_name, _idx_images(images), gz)
    _write(folder / lbl_name, _idx_labels(labels), gz)


def _write_idx_tree(folder, gz):
    train = (_tiny_images(5, 0), np.array([3, 1, 4, 1, 5]))
    test = (_tiny_images(3, 100), np.array([9, 2, 6]))
    _write_idx_split(folder, "train", *train, gz=gz)
    _write_idx_split(folder, "test", *test, gz=gz)
    return {"train": train, "test": test}


def _write_cifar_tree(root):
    """cifar-10-batches-py with 2 images per batch; returns expected NHWC uint8 + labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(123)
    expected = {}
    for split, files in (
        ("train", [f"data_batch_{i}" for i in range(1, 6)]),
        ("test", ["test_batch"]),
    ):
        xs, ys = [], []
        for b, fname in enumerate(files):
            data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
            labels = [(2 * b) % 10, (2 * b + 1) % 10]
            with open(folder / fname, "wb") as f:
                pickle.dump({b"data": data, b"labels": labels, b"batch_label": b"x"}, f)
            xs.append(data)
            ys.extend(labels)
        expected[split] = (np.concatenate(xs), np.array(ys))
    return expected


# --------------------------------------------------------------------------- #
# IDX: fashion_mnist and mnist
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_values_exact(tmp_path, name, gz):
    expected = _write_idx_tree(tmp_path, gz=gz)
    for split in ("train", "test"):
        x, y = datasets.load(name, split)
        images, labels = expected[split]
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(images), 28, 28, 1) and y.shape == (len(images),)
        np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / np.float32(255))
        np.testing.assert_array_equal(y, labels)
        assert x.min() >= 0.0 and x.max() <= 1.0


@pytest.mark.parametrize(
    ("name", "subfolder"),
    [("fashion_mnist", "fashion_mnist"), ("fashion_mnist", "fashion-mnist"), ("mnist", "mnist")],
)
def test_idx_in_subfolder_and_limit(tmp_path, name, subfolder):
    expected = _write_idx_tree(tmp_path / subfolder, gz=True)
    x, y = datasets.load(name, "train", limit=2)
    assert x.shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(x[..., 0], expected["train"][0][:2] / np.float32(255))
    np.testing.assert_array_equal(y, [3, 1])
    # A limit larger than the split returns everything.
    x, y = datasets.load(name, "test", limit=1000)
    assert len(x) == len(y) == 3


def test_data_dir_argument_wins_over_env(tmp_path, monkeypatch):
    env_dir, arg_dir = tmp_path / "env", tmp_path / "arg"
    _write_idx_split(env_dir, "test", _tiny_images(2, 0), [1, 1], gz=True)
    _write_idx_split(arg_dir, "test", _tiny_images(4, 9), [7, 7, 7, 7], gz=False)
    monkeypatch.setenv("MANIDEFENSE_DATA", str(env_dir))
    assert len(datasets.load("mnist", "test")[1]) == 2
    x, y = datasets.load("mnist", "test", data_dir=arg_dir)
    np.testing.assert_array_equal(y, [7, 7, 7, 7])
    np.testing.assert_array_equal(x[..., 0], _tiny_images(4, 9) / np.float32(255))


def test_debian_dir_used_for_fashion_mnist(tmp_path, monkeypatch):
    debian = tmp_path / "debian"
    _write_idx_split(debian, "test", _tiny_images(2, 5), [9, 0], gz=True)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", debian)
    monkeypatch.delenv("MANIDEFENSE_DATA")
    x, y = datasets.load("fashion_mnist", "test")
    np.testing.assert_array_equal(y, [9, 0])
    assert x.shape == (2, 28, 28, 1)


def test_bad_magic_number_names_file(tmp_path):
    images = _tiny_images(2, 0)
    _write(tmp_path / "train-images-idx3-ubyte", _idx_images(images, magic=1234), gz=True)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_labels([0, 1]), gz=True)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz.*magic.*2051.*1234"):
        datasets.load("fashion_mnist", "train")


def test_size_mismatch_names_file(tmp_path):
    images = _tiny_images(2, 0)
    _write(tmp_path / "t10k-images-idx3-ubyte", _idx_images(images)[:-10], gz=False)
    _write(tmp_path / "t10k-labels-idx1-ubyte", _idx_labels([0, 1]), gz=False)
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte.*size mismatch"):
        datasets.load("mnist", "test")


def test_label_count_mismatch(tmp_path):
    _write_idx_split(tmp_path, "test", _tiny_images(3, 0), [0, 1], gz=False)
    with pytest.raises(ValueError, match=r"3 images, 2 labels"):
        datasets.load("mnist", "test")


def test_mnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "y_train": np.array([0, 1, 2, 3], np.uint8),
        "x_test": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "y_test": np.array([8, 9], np.uint8),
    }
    (tmp_path / "mnist").mkdir()
    np.savez(tmp_path / "mnist" / "mnist.npz", **arrays)
    for split in ("train", "test"):
        x, y = datasets.load("mnist", split)
        assert x.dtype == np.float32 and y.dtype == np.int64
        np.testing.assert_array_equal(x[..., 0], arrays[f"x_{split}"] / np.float32(255))
        np.testing.assert_array_equal(y, arrays[f"y_{split}"])
    assert datasets.load("mnist", "train", limit=3)[0].shape == (3, 28, 28, 1)


# --------------------------------------------------------------------------- #
# CIFAR-10
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("subfolder", ["", "cifar10"])
def test_cifar10_pickles(tmp_path, subfolder):
    expected = _write_cifar_tree(tmp_path / subfolder if subfolder else tmp_path)
    x, y = datasets.load("cifar10", "train")
    assert x.shape == (10, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int64
    raw, labels = expected["train"]
    np.testing.assert_array_equal(y, labels)  # batches 1..5 concatenated in order
    # Pixel (row=3, col=5, channel=c) of image i sits at raw[i, c * 1024 + 3 * 32 + 5].
    for i in (0, 3, 9):
        for c in range(3):
            assert x[i, 3, 5, c] == np.float32(raw[i, c * 1024 + 3 * 32 + 5]) / np.float32(255)
    np.testing.assert_array_equal(
        x, raw.reshape(10, 3, 32, 32).transpose(0, 2, 3, 1) / np.float32(255)
    )

    xt, yt = datasets.load("cifar10", "test")
    np.testing.assert_array_equal(yt, expected["test"][1])
    assert xt[1, 31, 0, 2] == np.float32(expected["test"][0][1, 2 * 1024 + 31 * 32]) / 255

    x2, y2 = datasets.load("cifar10", "train", limit=3)
    np.testing.assert_array_equal(x2, x[:3])
    np.testing.assert_array_equal(y2, y[:3])


def test_cifar10_malformed_batch_names_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(ValueError, match=r"test_batch.*\(n, 3072\)"):
        datasets.load("cifar10", "test")


# --------------------------------------------------------------------------- #
# Not found, offline
# --------------------------------------------------------------------------- #


def test_fashion_mnist_not_found_message():
    with pytest.raises(datasets.DatasetNotFoundError) as info:
        datasets.load("fashion_mnist", "test")
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "apt install dataset-fashion-mnist" in message
    assert "MANIDEFENSE_DATA" in message
    assert "keras.datasets.fashion_mnist" in message
    assert "t10k-images-idx3-ubyte.gz" in message
    assert "MANIDEFENSE_OFFLINE" in message


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_other_datasets_not_found_message(name, monkeypatch):
    monkeypatch.delenv("MANIDEFENSE_DATA")
    with pytest.raises(datasets.DatasetNotFoundError) as info:
        datasets.load(name)
    message = str(info.value)
    assert "apt" in message and "MANIDEFENSE_DATA" in message
    assert f"keras.datasets.{name}" in message


def _fake_keras(monkeypatch, name, load_data):
    """Installs a stand-in `keras` module (cheap, and it can never download)."""
    dataset = types.SimpleNamespace(load_data=load_data)
    fake = types.ModuleType("keras")
    fake.datasets = types.SimpleNamespace(**{name: dataset})
    monkeypatch.setitem(sys.modules, "keras", fake)


def test_download_failure_is_wrapped(monkeypatch):
    """Online, a failing keras download becomes DatasetNotFoundError."""

    def fail():
        raise OSError("no network")

    monkeypatch.delenv("MANIDEFENSE_OFFLINE")
    _fake_keras(monkeypatch, "mnist", fail)
    with pytest.raises(datasets.DatasetNotFoundError, match="no network") as info:
        datasets.load("mnist", "test")
    assert isinstance(info.value.__cause__, OSError)


def test_keras_fallback_is_converted(monkeypatch):
    """The keras.datasets result is converted to NHWC float32 / int64 like local files."""
    images = _tiny_images(3, 1)
    result = ((images, np.array([1, 2, 3], np.uint8)), (images[:1], np.array([4], np.uint8)))
    monkeypatch.delenv("MANIDEFENSE_OFFLINE")
    _fake_keras(monkeypatch, "fashion_mnist", lambda: result)
    x, y = datasets.load("fashion_mnist", "train", limit=2)
    assert x.shape == (2, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x[..., 0], images[:2] / np.float32(255))
    np.testing.assert_array_equal(y, [1, 2])


# --------------------------------------------------------------------------- #
# Synthetic
# --------------------------------------------------------------------------- #


def _nearest_mean_accuracy(x, y, xt, yt, k, pixels=None):
    x, xt = x.reshape(len(x), -1), xt.reshape(len(xt), -1)
    if pixels is not None:
        x, xt = x[:, pixels], xt[:, pixels]
    means = np.stack([x[y == c].mean(axis=0) for c in range(k)])
    d = (xt**2).sum(1)[:, None] - 2 * xt @ means.T + (means**2).sum(1)[None, :]
    return float((d.argmin(axis=1) == yt).mean())


def test_synthetic_defaults():
    x, y = datasets.load("synthetic")
    assert x.shape == (6000, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (6000,) and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_array_equal(np.bincount(y, minlength=10), [600] * 10)
    xt, yt = datasets.load("synthetic", "test")
    assert xt.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(yt, minlength=10), [100] * 10)


def test_synthetic_deterministic_and_seeded():
    a = datasets.load("synthetic", "train", num_examples=200)
    b = datasets.load("synthetic", "train", num_examples=200)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    c = datasets.load("synthetic", "train", num_examples=200, seed=1)
    assert not np.array_equal(a[0], c[0])
    # limit returns a prefix of the full split.
    d = datasets.load("synthetic", "train", limit=50, num_examples=200)
    np.testing.assert_array_equal(d[0], a[0][:50])
    np.testing.assert_array_equal(d[1], a[1][:50])


def test_synthetic_train_and_test_differ():
    x, _ = datasets.load("synthetic", "train", num_examples=300)
    xt, _ = datasets.load("synthetic", "test", num_examples=300)
    assert not np.array_equal(x, xt)
    # No test example is a copy of a train example.
    flat, flat_t = x.reshape(300, -1), xt.reshape(300, -1)
    d = (flat_t**2).sum(1)[:, None] - 2 * flat_t @ flat.T + (flat**2).sum(1)[None, :]
    assert d.min() > 1.0


def test_synthetic_arbitrary_shape():
    x, y = datasets.load("synthetic", "train", shape=(8, 8, 3), num_classes=3, num_examples=90)
    assert x.shape == (90, 8, 8, 3)
    assert set(np.unique(y)) == {0, 1, 2}
    np.testing.assert_array_equal(np.bincount(y), [30, 30, 30])
    assert x.min() >= 0.0 and x.max() <= 1.0
    x, y = datasets.load("synthetic", "test", shape=(5, 7, 2), num_classes=4, num_examples=10)
    assert x.shape == (10, 5, 7, 2) and y.max() < 4
    assert np.bincount(y, minlength=4).max() - np.bincount(y, minlength=4).min() <= 1


def test_synthetic_learnable_but_noisy():
    x, y = datasets.load("synthetic", "train", num_examples=3000)
    xt, yt = datasets.load("synthetic", "test")
    assert _nearest_mean_accuracy(x, y, xt, yt, 10) > 0.9
    # No single pixel carries the label.
    flat_std = x.reshape(len(x), -1)
    best_pixels = np.argsort(flat_std.std(axis=0))[-20:]
    for p in best_pixels:
        assert _nearest_mean_accuracy(x, y, xt, yt, 10, pixels=[p]) < 0.6
    # Noise is real: examples of one class are not identical.
    same_class = x[y == 0]
    assert same_class.std(axis=0).mean() > 0.05


def test_synthetic_learnable_small_shape():
    kwargs = {"shape": (8, 8, 3), "num_classes": 3}
    x, y = datasets.load("synthetic", "train", num_examples=600, **kwargs)
    xt, yt = datasets.load("synthetic", "test", num_examples=600, **kwargs)
    assert _nearest_mean_accuracy(x, y, xt, yt, 3) > 0.9


@pytest.mark.parametrize(
    ("options", "arg"),
    [
        ({"shape": (28, 28)}, "shape"),
        ({"shape": (0, 4, 1)}, "shape"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_examples": 0}, "num_examples"),
        ({"seed": -1}, "seed"),
        ({"colour": True}, "colour"),
    ],
)
def test_synthetic_bad_options(options, arg):
    with pytest.raises(ValueError, match=arg):
        datasets.load("synthetic", **options)


def test_options_rejected_for_real_datasets():
    with pytest.raises(ValueError, match="seed"):
        datasets.load("mnist", seed=3)


# --------------------------------------------------------------------------- #
# Argument validation, metadata
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"name": "imagenet"}, "name='imagenet'"),
        ({"name": None}, "name=None"),
        ({"name": "mnist", "split": "val"}, "split='val'"),
        ({"name": "synthetic", "limit": 0}, "limit=0"),
        ({"name": "synthetic", "limit": -3}, "limit=-3"),
        ({"name": "synthetic", "limit": 2.5}, "limit=2.5"),
        ({"name": "synthetic", "limit": True}, "limit=True"),
        ({"name": "synthetic", "limit": "10"}, "limit='10'"),
    ],
)
def test_invalid_arguments(kwargs, needle):
    arg = needle.split("=")[0]
    with pytest.raises(ValueError) as info:
        datasets.load(**kwargs)
    message = str(info.value)
    assert f"`{arg}`" in message
    assert f"Received: {needle}" in message


def test_split_message_lists_expected():
    with pytest.raises(ValueError, match=r"one of \('train', 'test'\)\. Received: split='val'"):
        datasets.load("synthetic", "val")


def test_numpy_integer_limit_accepted():
    x, _ = datasets.load("synthetic", limit=np.int64(7), num_examples=20)
    assert len(x) == 7


def test_class_names_and_num_classes():
    assert datasets.class_names("fashion_mnist")[0] == "T-shirt/top"
    assert datasets.class_names("fashion_mnist")[9] == "Ankle boot"
    assert datasets.class_names("mnist") == tuple("0123456789")
    assert datasets.class_names("cifar10")[0] == "airplane"
    assert datasets.class_names("cifar10")[9] == "truck"
    assert datasets.class_names("synthetic", num_classes=3) == ("class 0", "class 1", "class 2")
    for name in datasets.NAMES:
        assert datasets.num_classes(name) == datasets.NUM_CLASSES[name] == 10
        assert len(datasets.class_names(name)) == 10
    with pytest.raises(ValueError, match="name='svhn'"):
        datasets.num_classes("svhn")


# --------------------------------------------------------------------------- #
# The real Debian copy, when installed
# --------------------------------------------------------------------------- #

REAL_DEBIAN_DIR = datasets.DEBIAN_FASHION_MNIST_DIR


@pytest.mark.skipif(
    not (REAL_DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)
def test_real_debian_fashion_mnist(monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", REAL_DEBIAN_DIR)
    monkeypatch.delenv("MANIDEFENSE_DATA")
    x, y = datasets.load("fashion_mnist", "test", limit=100)
    assert x.shape == (100, 28, 28, 1) and x.dtype == np.float32
    assert y.shape == (100,) and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    assert y[0] == 9  # Ankle boot
    assert datasets.class_names("fashion_mnist")[y[0]] == "Ankle boot"
