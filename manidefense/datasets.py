"""Image classification datasets as NHWC float32 arrays in `[0, 1]`.

`load()` returns `(x, y)` for one split of a dataset, where `x` is a float32
NumPy array of shape `(n, height, width, channels)` with values in `[0, 1]`
and `y` holds int64 class indices of shape `(n,)`.

Supported datasets:

- `"fashion_mnist"`: 28x28x1, 10 classes. Read, in order, from `data_dir`
  (or the folder named by the `MANIDEFENSE_DATA` environment variable), from
  `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`
  package), or downloaded by `keras.datasets.fashion_mnist.load_data()`.
- `"mnist"`: 28x28x1, 10 classes. Read from IDX files or a Keras-style
  `mnist.npz` in `data_dir` / `MANIDEFENSE_DATA`, or downloaded by
  `keras.datasets.mnist.load_data()`.
- `"cifar10"`: 32x32x3, 10 classes. Read from the CIFAR-10 "python version"
  folder `cifar-10-batches-py` in `data_dir` / `MANIDEFENSE_DATA`, or
  downloaded by `keras.datasets.cifar10.load_data()`.
- `"synthetic"`: a deterministic, learnable data set of any image shape,
  generated on the fly. It needs no files and no network.

Environment variables:

- `MANIDEFENSE_DATA`: a folder to look for data files in when `data_dir` is
  not given. Files may sit directly in it or in a subfolder named after the
  dataset (`fashion_mnist` or `fashion-mnist`, `mnist`, `cifar10`).
- `MANIDEFENSE_OFFLINE`: when set to `1` (or `true`, `yes`, `on`), never
  download: if no local copy is found, raise `DatasetNotFoundError` at once.

Example:

>>> x, y = load("synthetic", "train", limit=100, shape=(8, 8, 3), num_classes=3)
>>> x.shape, x.dtype, y.dtype
((100, 8, 8, 3), dtype('float32'), dtype('int64'))
"""

import gzip
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "DatasetNotFoundError",
    "NAMES",
    "NUM_CLASSES",
    "SPLITS",
    "class_names",
    "load",
    "num_classes",
]

#: Folder where Debian's `dataset-fashion-mnist` package installs the IDX files.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Names accepted by `load()`.
NAMES = ("fashion_mnist", "mnist", "cifar10", "synthetic")

#: Splits accepted by `load()`.
SPLITS = ("train", "test")

#: Number of classes of each fixed dataset (`"synthetic"` defaults to 10).
NUM_CLASSES = {"fashion_mnist": 10, "mnist": 10, "cifar10": 10, "synthetic": 10}

_CLASS_NAMES = {
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "mnist": tuple(str(i) for i in range(10)),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}

_DATA_ENV = "MANIDEFENSE_DATA"
_OFFLINE_ENV = "MANIDEFENSE_OFFLINE"
_TRUE_STRINGS = ("1", "true", "yes", "on")

_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049
_IDX_PREFIX = {"train": "train", "test": "t10k"}

_SUBFOLDERS = {
    "fashion_mnist": ("fashion_mnist", "fashion-mnist"),
    "mnist": ("mnist",),
    "cifar10": ("cifar10",),
}

_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}

_SYNTHETIC_OPTIONS = ("shape", "num_classes", "num_examples", "seed")
_SYNTHETIC_DEFAULT_EXAMPLES = {"train": 6000, "test": 1000}


class DatasetNotFoundError(FileNotFoundError):
    """Raised when no local copy of a dataset is found and it cannot be downloaded.

    The message lists every way to make the data available.

    Example:

    >>> try:
    ...     x, y = load("cifar10", "test")
    ... except DatasetNotFoundError as error:
    ...     print(error)  # where the files were looked for, and how to provide them
    ...     x, y = load("synthetic", "test", shape=(32, 32, 3))
    """


# --------------------------------------------------------------------------- #
# Public API
# --------------------------------------------------------------------------- #


def num_classes(name: str) -> int:
    """Returns the number of classes of a dataset.

    Args:
        name: One of `"fashion_mnist"`, `"mnist"`, `"cifar10"`, `"synthetic"`.
            For `"synthetic"` this is the default of its `num_classes` option.

    Returns:
        The number of classes, an `int`.

    Raises:
        ValueError: If `name` is not a known dataset.

    Example:

    >>> num_classes("cifar10")
    10
    """
    _check_name(name)
    return NUM_CLASSES[name]


def class_names(name: str, num_classes: int | None = None) -> tuple[str, ...]:
    """Returns human-readable class names of a dataset, indexed by label.

    Args:
        name: One of `"fashion_mnist"`, `"mnist"`, `"cifar10"`, `"synthetic"`.
        num_classes: Only for `"synthetic"`: its number of classes. Defaults
            to `NUM_CLASSES["synthetic"]`.

    Returns:
        A tuple of strings; entry `i` names label `i`. `"synthetic"` classes are
        called `"class 0"`, `"class 1"`, ...

    Raises:
        ValueError: If `name` is not a known dataset, or `num_classes` is given
            for a dataset other than `"synthetic"` or is not an integer >= 2.

    Example:

    >>> class_names("fashion_mnist")[9]
    'Ankle boot'
    """
    _check_name(name)
    if name == "synthetic":
        k = NUM_CLASSES["synthetic"] if num_classes is None else num_classes
        k = _check_int("num_classes", k, minimum=2)
        return tuple(f"class {i}" for i in range(k))
    if num_classes is not None:
        raise ValueError(
            "Argument `num_classes` is only accepted for name='synthetic'. "
            f"Received: name={name!r}, num_classes={num_classes!r}"
        )
    return _CLASS_NAMES[name]


def load(
    name: str,
    split: str = "train",
    limit: int | None = None,
    *,
    data_dir: str | os.PathLike | None = None,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads one split of a dataset as NHWC float32 images and int64 labels.

    Local copies are always preferred over downloads; see the module
    docstring for where each dataset is looked for. Downloading through
    `keras.datasets` is the last resort and can be disabled by setting the
    environment variable `MANIDEFENSE_OFFLINE=1`.

    Args:
        name: One of `"fashion_mnist"`, `"mnist"`, `"cifar10"`, `"synthetic"`.
        split: `"train"` or `"test"`.
        limit: `None` to return the whole split, or a positive `int`: keep only
            the first `limit` examples (always the same ones).
        data_dir: Optional folder holding the data files (directly or in a
            subfolder named after the dataset). Defaults to the environment
            variable `MANIDEFENSE_DATA`, if set. Ignored by `"synthetic"`.
        **options: Only for `"synthetic"`:
            `shape`: image shape `(height, width, channels)`, default
            `(28, 28, 1)`.
            `num_classes`: number of classes (>= 2), default 10.
            `num_examples`: size of the split before `limit`, default 6000
            for `"train"` and 1000 for `"test"`.
            `seed`: integer seed (>= 0), default 0. The class prototypes
            depend only on `seed` and `shape`; train and test examples come
            from different random streams.

    Returns:
        A tuple `(x, y)`: `x` is a float32 array of shape
        `(n, height, width, channels)` with values in `[0, 1]` (28x28x1 for
        the MNIST datasets, 32x32x3 for CIFAR-10); `y` is an int64 array of
        shape `(n,)` with class indices in `[0, num_classes)`.

    Raises:
        ValueError: If `name`, `split`, `limit` or an option is invalid, or a
            data file is malformed (the message names the file).
        DatasetNotFoundError: If the data is not found locally and cannot be
            downloaded (or downloading is disabled). A subclass of
            `FileNotFoundError`.

    Example:

    >>> x, y = load("synthetic", "test", limit=10)
    >>> x.shape, y.shape
    ((10, 28, 28, 1), (10,))
    >>> x_train, y_train = load("fashion_mnist", "train")  # doctest: +SKIP
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"Argument `split` must be one of {SPLITS}. Received: split={split!r}")
    if limit is not None:
        limit = _check_int("limit", limit, minimum=1, allow_none=True)

    if name == "synthetic":
        unknown = sorted(set(options) - set(_SYNTHETIC_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unknown option(s) {unknown} for name='synthetic'. "
                f"Expected some of {_SYNTHETIC_OPTIONS}. Received: {options!r}"
            )
        x, y = _synthetic(split, limit, **options)
        return x, y

    if options:
        raise ValueError(
            f"name={name!r} accepts no extra options (only 'synthetic' does). Received: {options!r}"
        )

    if name == "cifar10":
        images, labels = _load_cifar10(split, data_dir)
    else:
        images, labels = _load_mnist_like(name, split, data_dir)

    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    x = images.astype(np.float32)
    x /= np.float32(255.0)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    return x, y


# --------------------------------------------------------------------------- #
# Argument checking
# --------------------------------------------------------------------------- #


def _check_name(name):
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"Argument `name` must be one of {NAMES}. Received: name={name!r}")


def _check_int(arg, value, minimum, allow_none=False):
    expected = f"an integer >= {minimum}" + (" or None" if allow_none else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"Argument `{arg}` must be {expected}. Received: {arg}={value!r}")
    if value < minimum:
        raise ValueError(f"Argument `{arg}` must be {expected}. Received: {arg}={value!r}")
    return int(value)


# --------------------------------------------------------------------------- #
# Finding local files
# --------------------------------------------------------------------------- #


def _search_dirs(name, data_dir):
    """Folders to look in, most preferred first: data_dir or $MANIDEFENSE_DATA."""
    if data_dir is not None:
        base = Path(os.fspath(data_dir)).expanduser()
    else:
        env = os.environ.get(_DATA_ENV)
        if not env:
            return []
        base = Path(env).expanduser()
    return [base] + [base / sub for sub in _SUBFOLDERS[name]]


def _offline():
    return os.environ.get(_OFFLINE_ENV, "").strip().lower() in _TRUE_STRINGS


def _find_file(folder, filename):
    """Returns `folder/filename[.gz]` if one exists (plain file preferred), else None."""
    for candidate in (folder / filename, folder / (filename + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _find_idx_pair(folder, split):
    prefix = _IDX_PREFIX[split]
    images = _find_file(folder, f"{prefix}-images-idx3-ubyte")
    labels = _find_file(folder, f"{prefix}-labels-idx1-ubyte")
    if images is not None and labels is not None:
        return images, labels
    return None


# --------------------------------------------------------------------------- #
# IDX (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------- #


def _read_bytes(path):
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        return f.read()


def _parse_idx(path, magic, ndim):
    """Parses an unsigned-byte IDX file; returns a uint8 array with `ndim` dims."""
    data = _read_bytes(path)
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise ValueError(
            f"IDX file {str(path)!r} is too short: expected a header of {header_size} "
            f"bytes. Received: {len(data)} bytes"
        )
    header = np.frombuffer(data, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise ValueError(
            f"IDX file {str(path)!r} has a bad magic number: expected {magic}. "
            f"Received: {int(header[0])}"
        )
    shape = tuple(int(d) for d in header[1:])
    expected = int(np.prod(shape, dtype=np.int64))
    received = len(data) - header_size
    if received != expected:
        raise ValueError(
            f"IDX file {str(path)!r} has a size mismatch: header shape {shape} needs "
            f"{expected} data bytes. Received: {received} bytes"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def _read_idx_pair(images_path, labels_path):
    images = _parse_idx(images_path, _IDX_IMAGES_MAGIC, ndim=3)
    labels = _parse_idx(labels_path, _IDX_LABELS_MAGIC, ndim=1)
    if len(images) != len(labels):
        raise ValueError(
            f"IDX files {str(images_path)!r} and {str(labels_path)!r} disagree: expected "
            f"as many labels as images. Received: {len(images)} images, {len(labels)} labels"
        )
    return images[..., np.newaxis], labels


def _read_mnist_npz(path, split):
    with np.load(path, allow_pickle=False) as data:
        keys = (f"x_{split}", f"y_{split}")
        missing = [k for k in keys if k not in data.files]
        if missing:
            raise ValueError(
                f"File {str(path)!r} must hold arrays {keys} (keras' mnist.npz format). "
                f"Received: arrays {tuple(data.files)}"
            )
        images, labels = data[keys[0]], data[keys[1]]
    if images.ndim == 3:
        images = images[..., np.newaxis]
    if len(images) != len(labels):
        raise ValueError(
            f"File {str(path)!r}: expected as many labels as images. "
            f"Received: {len(images)} images, {len(labels)} labels"
        )
    return images, labels


def _load_mnist_like(name, split, data_dir):
    folders = _search_dirs(name, data_dir)
    if name == "fashion_mnist":
        folders = folders + [Path(DEBIAN_FASHION_MNIST_DIR)]
    for folder in folders:
        pair = _find_idx_pair(folder, split)
        if pair is not None:
            return _read_idx_pair(*pair)
        if name == "mnist" and (folder / "mnist.npz").is_file():
            return _read_mnist_npz(folder / "mnist.npz", split)
    (x_train, y_train), (x_test, y_test) = _keras_fallback(name, split, folders)
    images, labels = (x_train, y_train) if split == "train" else (x_test, y_test)
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., np.newaxis]
    return images, labels


# --------------------------------------------------------------------------- #
# CIFAR-10
# --------------------------------------------------------------------------- #


def _find_cifar_folder(folders, split):
    for folder in folders:
        for candidate in (folder / _CIFAR_FOLDER, folder):
            if all((candidate / f).is_file() for f in _CIFAR_FILES[split]):
                return candidate
    return None


def _read_cifar_batch(path):
    # CIFAR-10's standard "python version" distribution is a set of pickle files, so
    # pickle is unavoidable here. Only load files from a source you trust: unpickling
    # can run arbitrary code.
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"CIFAR-10 batch file {str(path)!r} must be a dict with keys b'data' and "
            f"b'labels'. Received: {keys}"
        )
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ValueError(
            f"CIFAR-10 batch file {str(path)!r} has a size mismatch: expected data of shape "
            f"(n, 3072) and n labels. Received: data shape {data.shape}, "
            f"{labels.shape[0]} labels"
        )
    # Rows are channel-planar: 1024 red, then 1024 green, then 1024 blue values.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def _load_cifar10(split, data_dir):
    folders = _search_dirs("cifar10", data_dir)
    folder = _find_cifar_folder(folders, split)
    if folder is not None:
        parts = [_read_cifar_batch(folder / f) for f in _CIFAR_FILES[split]]
        images = np.concatenate([p[0] for p in parts], axis=0)
        labels = np.concatenate([p[1] for p in parts], axis=0)
        return images, labels
    (x_train, y_train), (x_test, y_test) = _keras_fallback("cifar10", split, folders)
    return (x_train, y_train) if split == "train" else (x_test, y_test)


# --------------------------------------------------------------------------- #
# keras.datasets fallback
# --------------------------------------------------------------------------- #


def _not_found_message(name, split, folders, reason):
    if folders:
        searched = "no local copy in " + ", ".join(repr(str(f)) for f in folders)
    else:
        searched = f"no local copy (data_dir not given and {_DATA_ENV} not set)"
    if name == "fashion_mnist":
        ways = (
            "  1. On Debian/Ubuntu: `sudo apt install dataset-fashion-mnist` (installs the "
            f"IDX files into {str(DEBIAN_FASHION_MNIST_DIR)!r}).\n"
            f"  2. Set the environment variable {_DATA_ENV} (or pass data_dir=) to a folder "
            "holding the four IDX files train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz (gzipped or not), directly or in a 'fashion_mnist' "
            "subfolder.\n"
            "  3. Allow internet access so keras.datasets.fashion_mnist.load_data() can "
            f"download it (and leave {_OFFLINE_ENV} unset)."
        )
    elif name == "mnist":
        ways = (
            "  1. Copy keras' cached ~/.keras/datasets/mnist.npz from a machine that has "
            "downloaded it into a folder of step 2 (there is no Debian package for MNIST, "
            "so `apt` cannot install it).\n"
            f"  2. Set the environment variable {_DATA_ENV} (or pass data_dir=) to a folder "
            "holding keras' mnist.npz, or the four IDX files train-images-idx3-ubyte.gz, "
            "train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
            "t10k-labels-idx1-ubyte.gz (gzipped or not), directly or in an 'mnist' "
            "subfolder.\n"
            "  3. Allow internet access so keras.datasets.mnist.load_data() can download it "
            f"(and leave {_OFFLINE_ENV} unset)."
        )
    else:
        ways = (
            f"  1. Copy the extracted '{_CIFAR_FOLDER}' folder (keras caches it in "
            "~/.keras/datasets/) from a machine that has downloaded it into a folder of "
            "step 2 (there is no Debian package for CIFAR-10, so `apt` cannot install it).\n"
            f"  2. Set the environment variable {_DATA_ENV} (or pass data_dir=) to a folder "
            f"holding its extracted '{_CIFAR_FOLDER}' folder (data_batch_1 .. data_batch_5 "
            "and test_batch), directly or in a 'cifar10' subfolder.\n"
            "  3. Allow internet access so keras.datasets.cifar10.load_data() can download "
            f"it (and leave {_OFFLINE_ENV} unset)."
        )
    return (
        f"Could not find dataset {name!r} (split={split!r}): {searched}, "
        f"and {reason}. Ways to get the data:\n{ways}"
    )


def _keras_fallback(name, split, folders):
    """Last resort: keras.datasets.<name>.load_data(), which may download."""
    if _offline():
        reason = f"downloading is disabled ({_OFFLINE_ENV}={os.environ.get(_OFFLINE_ENV)!r})"
        raise DatasetNotFoundError(_not_found_message(name, split, folders, reason))
    try:
        import keras  # imported lazily so that importing this module stays cheap

        return getattr(keras.datasets, name).load_data()
    except Exception as e:
        reason = f"keras.datasets.{name}.load_data() failed ({type(e).__name__}: {e})"
        raise DatasetNotFoundError(_not_found_message(name, split, folders, reason)) from e


# --------------------------------------------------------------------------- #
# Synthetic data
# --------------------------------------------------------------------------- #


def _check_shape(shape):
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if (
        dims is None
        or len(dims) != 3
        or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, (bool, np.bool_)) and d >= 1
            for d in dims
        )
    ):
        raise ValueError(
            "Option `shape` must be a tuple of 3 positive integers (height, width, channels). "
            f"Received: shape={shape!r}"
        )
    return tuple(int(d) for d in dims)


def _synthetic_prototypes(shape, k, seed):
    """K smooth patterns in roughly [0.15, 0.85]: sums of low-frequency sinusoids."""
    h, w, c = shape
    rng = np.random.default_rng(seed)
    waves = 4
    yy = np.linspace(0.0, 1.0, h, dtype=np.float64)[:, None]
    xx = np.linspace(0.0, 1.0, w, dtype=np.float64)[None, :]
    protos = np.empty((k, h, w, c), dtype=np.float64)
    for i in range(k):
        for ch in range(c):
            freq_y = rng.uniform(-2.5, 2.5, size=waves)
            freq_x = rng.uniform(-2.5, 2.5, size=waves)
            phase = rng.uniform(0.0, 2.0 * np.pi, size=waves)
            amp = rng.uniform(0.5, 1.0, size=waves)
            pattern = np.zeros((h, w))
            for j in range(waves):
                pattern += amp[j] * np.sin(
                    2.0 * np.pi * (freq_y[j] * yy + freq_x[j] * xx) + phase[j]
                )
            # Scale by a fixed bound (sum of amplitudes) rather than min-max, so tiny or
            # constant images (e.g. 1x1) stay well defined.
            protos[i, :, :, ch] = 0.5 + 0.35 * pattern / amp.sum()
    return protos


def _synthetic(split, limit, shape=(28, 28, 1), num_classes=10, num_examples=None, seed=0):
    shape = _check_shape(shape)
    k = _check_int("num_classes", num_classes, minimum=2)
    if num_examples is None:
        num_examples = _SYNTHETIC_DEFAULT_EXAMPLES[split]
    n = _check_int("num_examples", num_examples, minimum=1)
    seed = _check_int("seed", seed, minimum=0)
    if limit is not None:
        n_out = min(n, limit)
    else:
        n_out = n

    protos = _synthetic_prototypes(shape, k, seed).reshape(k, -1).astype(np.float32)
    # Train and test draw from independent streams derived from the same seed.
    stream = 1 if split == "train" else 2
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))

    # Balanced labels (counts differ by at most 1), shuffled deterministically.
    labels = rng.permutation(np.arange(n, dtype=np.int64) % k)
    # Mix in a small random amount of the other prototypes, then add pixel noise.
    mix_total = rng.uniform(0.0, 0.3, size=n)
    others = 1.0 - rng.random((n, k))  # in (0, 1], so rows never sum to 0
    others[np.arange(n), labels] = 0.0
    others *= (mix_total / others.sum(axis=1))[:, None]
    weights = others
    weights[np.arange(n), labels] = 1.0 - mix_total
    # Generate everything for all n examples so `limit` returns a prefix of the full split.
    noise = rng.standard_normal((n, protos.shape[1]), dtype=np.float32)
    labels, weights, x = labels[:n_out], weights[:n_out].astype(np.float32), noise[:n_out]

    # x = weights @ protos + 0.2 * noise, summed class by class (not with a BLAS matmul,
    # whose rounding may depend on the number of rows) so any prefix is bit-identical.
    x *= np.float32(0.2)
    for j in range(k):
        x += weights[:, j, None] * protos[j]
    np.clip(x, 0.0, 1.0, out=x)
    return x.reshape((n_out,) + shape), labels
