"""CIFAR-10: find or download it, load it and split it.

Three layers, each usable alone:

- `ensure_cifar10` finds the official `cifar-10-batches-py` folder, or
  downloads, verifies and safely extracts the archive (cifar_archive) when it
  is missing.
- `load_cifar10_uint8` reads the batches as uint8 images (N, 32, 32, 3);
  `load_CIFAR10` is the spec notebook's float64 API built on top of it.
- `prepare_cifar10` and `load_raw_split` glue these and the preprocessing
  (preprocessing.fit_preprocessor) into the spec's train/val/test split.

The product only ever holds uint8 images and float32 design matrices: 50k
float64 images are 1.2 GB, and a study keeps its data for its whole life.
Nothing here downloads or writes at import time. Every failure a user can fix
raises `DataError` with a one-line message naming the path or URL.
"""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cifar_archive
from .cifar_archive import CIFAR10_MD5, CIFAR10_URL, DOWNLOAD_TIMEOUT_S
from .config import IMAGE_SHAPE, PREPROCESSINGS
from .errors import DataError, UserError, one_line
from .preprocessing import Preprocessor, as_rows, fit_preprocessor, fit_whitening

DATA_DIR_ENV = "MLP_EXP_DATA_DIR"
DEFAULT_DATA_DIR = Path("data")             # relative to the current directory
BATCHES_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META_FILE = "batches.meta"
NUM_TRAIN, NUM_TEST = 50000, 10000
DEFAULT_LABEL_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
                       "dog", "frog", "horse", "ship", "truck")

_REBUILD_HINT = "delete it and re-run to download again, or rebuild the replica"


# ---------------------------------------------------------------- locating

def resolve_data_dir(data_dir=None) -> Path:
    """The folder that contains `cifar-10-batches-py/`.

    Order: the explicit argument, else $MLP_EXP_DATA_DIR, else ./data. Being
    handed the `cifar-10-batches-py` folder itself is accepted too.
    """
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    path = Path(data_dir).expanduser()
    if path.name == BATCHES_FOLDER and not (path / BATCHES_FOLDER).is_dir():
        return path.parent
    return path


def _batches_folder(root) -> Path:
    """`root` if it holds the batches, else `root/cifar-10-batches-py` (so a data dir works too)."""
    root = Path(root).expanduser()
    if not (root / TRAIN_BATCHES[0]).exists() and (root / BATCHES_FOLDER).is_dir():
        return root / BATCHES_FOLDER
    return root


def _missing_files(folder: Path) -> list[str]:
    return [name for name in (*TRAIN_BATCHES, TEST_BATCH) if not (folder / name).is_file()]


def ensure_cifar10(data_dir=None, *, download=True, url=CIFAR10_URL, md5=CIFAR10_MD5,
                   progress=True, timeout=DOWNLOAD_TIMEOUT_S) -> Path:
    """Return the `cifar-10-batches-py` folder under `data_dir`, downloading it if absent.

    The archive is streamed to a temp file inside the data dir, its MD5 checked
    (skipped when `md5` is None) before anything is extracted, extracted into a
    temp folder with every member vetted, and renamed into place in one step,
    so an interrupted or failed download never leaves a half-written folder.
    """
    data_dir = resolve_data_dir(data_dir)
    folder = data_dir / BATCHES_FOLDER
    if folder.is_dir():
        missing = _missing_files(folder)
        if missing:
            raise DataError(f"CIFAR-10 folder {folder} is incomplete (missing {', '.join(missing)}); "
                            f"{_REBUILD_HINT}")
        return folder
    if not download:
        raise DataError(f"CIFAR-10 not found at {folder}; pass --data-dir or set {DATA_DIR_ENV} to the "
                        f"folder containing {BATCHES_FOLDER}/, or allow the download from {url}")
    created = [d for d in (data_dir, *data_dir.parents) if not d.exists()]   # innermost first
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create data dir {data_dir}: {one_line(err, limit=None)}; "
                        f"pass --data-dir or set {DATA_DIR_ENV} to a writable folder") from err

    archive = extract_dir = None
    done = False
    try:
        fd, name = tempfile.mkstemp(dir=data_dir, prefix=".cifar-10-python.", suffix=".tar.gz.part")
        archive = Path(name)
        with os.fdopen(fd, "wb") as out:
            digest = cifar_archive.download(url, out, progress=progress, timeout=timeout)
        if md5 is not None and digest != md5.lower():
            raise DataError(f"checksum mismatch for {url} (got md5 {digest}, expected {md5}): the download "
                            f"is corrupt; nothing was extracted; re-run to retry, or download the archive by "
                            f"hand and extract it into {data_dir}")
        extract_dir = Path(tempfile.mkdtemp(dir=data_dir, prefix=".cifar-10-extract-"))
        cifar_archive.safe_extract(archive, extract_dir, url)
        extracted = extract_dir / BATCHES_FOLDER
        missing = _missing_files(extracted) if extracted.is_dir() else [f"{BATCHES_FOLDER}/"]
        if missing:
            raise DataError(f"archive from {url} has the wrong layout (missing {', '.join(missing)}); "
                            f"expected the official cifar-10-python.tar.gz")
        try:
            os.replace(extracted, folder)
        except OSError:
            if folder.is_dir() and not _missing_files(folder):
                done = True             # another process finished the same download first
                return folder
            raise
        done = True
    except OSError as err:
        raise DataError(f"could not write CIFAR-10 into {data_dir}: {one_line(err, limit=None)}; "
                        f"check free space and permissions, or pass --data-dir") from err
    finally:
        if archive is not None:
            archive.unlink(missing_ok=True)
        if extract_dir is not None:
            shutil.rmtree(extract_dir, ignore_errors=True)
        if not done:        # leave no empty folder behind a failed download; never a non-empty one
            for created_dir in created:
                try:
                    created_dir.rmdir()
                except OSError:
                    break
    return folder


# ----------------------------------------------------------------- loading

class UnsafePickleError(DataError):
    """A CIFAR-10 file whose pickle imports something a batch never holds: tampered with, never loaded."""


def _latin1_bytes(text, encoding):
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1"); admit only that call
    if not (isinstance(text, str) and encoding == "latin1"):
        raise pickle.UnpicklingError(f"_codecs.encode of {type(text).__name__} with {encoding!r}")
    return text.encode("latin1")


# Unpickling runs whatever callable the file names, and the MD5 check covers only a fresh
# download, so a file planted in ./data or $MLP_EXP_DATA_DIR could run code. A batch is dicts,
# lists, bytes, str, numbers and NumPy arrays: everything but the arrays comes from opcodes, so
# these are all the globals a genuine batch needs (pickletools on the official archive, the
# replica and the tests' fakes, at protocols 2-5), under both numpy 1 and numpy 2 module names.
# Object-dtype arrays are no way around it: their elements go through this same table.
_NP_RECONSTRUCT, _NP_FROMBUFFER = (np.empty(0).__reduce_ex__(p)[0] for p in (2, 5))   # what NumPy pickles with
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,     # the official archive, numpy 1 writers
    ("numpy._core.multiarray", "_reconstruct"): _NP_RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _NP_FROMBUFFER,          # protocol 5 (Python 3.14's default)
    ("numpy._core.numeric", "_frombuffer"): _NP_FROMBUFFER,
    ("_codecs", "encode"): _latin1_bytes,
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            return _PICKLE_GLOBALS[module, name]
        shown = one_line(ascii(f"{module}.{name}")[1:-1], limit=100)
        raise UnsafePickleError(f"CIFAR-10 file {self.path} holds a pickle that imports {shown}, which a CIFAR-10 "
                                f"batch never does; refusing to load it: {_REBUILD_HINT}")


def _load_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"CIFAR-10 file {path} is missing; {_REBUILD_HINT}")
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, path).load()
    except OSError as err:
        raise DataError(f"cannot read CIFAR-10 file {path}: {one_line(err, limit=None)}") from err
    except UnsafePickleError:
        raise
    except Exception as err:    # a corrupt pickle can raise almost anything (EOFError, UnpicklingError, ...)
        raise DataError(f"CIFAR-10 file {path} is truncated or unreadable ({type(err).__name__}); "
                        f"{_REBUILD_HINT}") from err
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR-10 file {path} holds a {type(batch).__name__}, not a batch dict; {_REBUILD_HINT}")
    return batch


def _load_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file -> (X uint8 (N, 32, 32, 3), y int64 (N,))."""
    batch = _load_pickle(path)
    missing = [key.decode() for key in (b"data", b"labels") if key not in batch]
    if missing:
        raise DataError(f"CIFAR-10 file {path} has no {' or '.join(missing)} entry; {_REBUILD_HINT}")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8
            and data.ndim == 2 and data.shape[1] == 3072):
        shape = getattr(data, "shape", None)
        raise DataError(f"CIFAR-10 file {path} has data of shape {shape} and type "
                        f"{getattr(data, 'dtype', type(data).__name__)}, expected uint8 (N, 3072); {_REBUILD_HINT}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu" \
            or (labels.size and not 0 <= labels.min() <= labels.max() <= 9):
        raise DataError(f"CIFAR-10 file {path} has {labels.size} labels for {data.shape[0]} images, or labels "
                        f"outside 0..9; {_REBUILD_HINT}")
    # rows are channel-major (1024 R, 1024 G, 1024 B, each 32 rows of 32): CHW -> HWC
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def load_cifar10_uint8(root) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the CIFAR-10 batches without converting to float.

    Inputs:
    - root: the `cifar-10-batches-py` folder (or the folder containing it).

    Returns (Xtr, ytr, Xte, yte):
    - Xtr: uint8 (50000, 32, 32, 3), data_batch_1..5 in order; ytr: int64 (50000,)
    - Xte: uint8 (10000, 32, 32, 3), test_batch;               yte: int64 (10000,)
    """
    folder = _batches_folder(root)
    if not folder.is_dir():
        raise DataError(f"CIFAR-10 folder {folder} does not exist; pass --data-dir or set {DATA_DIR_ENV} "
                        f"to the folder containing {BATCHES_FOLDER}/, or allow the download")
    train = [_load_batch(folder / name) for name in TRAIN_BATCHES]
    # concatenate would keep the transposed (CHW) memory order; reshape(N, -1) then copies
    Xtr = np.empty((sum(len(images) for images, _ in train), *IMAGE_SHAPE), dtype=np.uint8)
    np.concatenate([images for images, _ in train], out=Xtr)
    ytr = np.concatenate([labels for _, labels in train])
    del train
    Xte, yte = _load_batch(folder / TEST_BATCH)
    return Xtr, ytr, np.ascontiguousarray(Xte), yte


def load_CIFAR10(root):
    """The spec notebook's loader (cs231n data_utils).

    Returns Xtr float64 (50000, 32, 32, 3), Ytr int64 (50000,),
    Xte float64 (10000, 32, 32, 3), Yte int64 (10000,); pixel values 0..255.
    Float64 costs 1.2 GB for the training set: the product uses
    `load_cifar10_uint8` / `prepare_cifar10` instead.
    """
    Xtr, Ytr, Xte, Yte = load_cifar10_uint8(root)
    return Xtr.astype(np.float64), Ytr, Xte.astype(np.float64), Yte


def load_label_names(root) -> list[str]:
    """The 10 class names from batches.meta, or the standard names if it is absent or unreadable.

    Raises UnsafePickleError (a DataError) if batches.meta was tampered with: the names are
    cosmetic, but the user must learn that the folder holds a planted pickle.
    """
    path = _batches_folder(root) / META_FILE
    try:
        names = _load_pickle(path)[b"label_names"]
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    except UnsafePickleError:
        raise
    except (DataError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return list(DEFAULT_LABEL_NAMES)    # names are cosmetic; never fail a study over them
    return names if len(names) == 10 else list(DEFAULT_LABEL_NAMES)


# --------------------------------------------------------------- splitting

@dataclass
class _Split:
    """Train, validation and test images (rows) and their int64 labels."""
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Dataset(_Split):
    """The spec's split, preprocessed: X_* float32 (N, 3072), y_* int64 (N,)."""
    preprocessor: Preprocessor
    label_names: list


def _check_split_sizes(train_size, val_size, test_size, num_train, num_test) -> None:
    for name, value in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
        if value is None and name == "test_size":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    if train_size + val_size > num_train:
        raise UserError(f"train_size + val_size = {train_size} + {val_size} = {train_size + val_size} "
                        f"exceeds the {num_train} CIFAR-10 training images")
    if test_size is not None and test_size > num_test:
        raise UserError(f"test_size = {test_size} exceeds the {num_test} CIFAR-10 test images")


def prepare_cifar10(data_dir=None, *, train_size=49000, val_size=1000, test_size=None,
                    preprocessing="mean_image", download=True, progress=True) -> Dataset:
    """Load CIFAR-10 once and return the spec's preprocessed split.

    Training is the first `train_size` training images, validation the next
    `val_size`, test the first `test_size` test images (None: all 10000). The
    preprocessor is fitted on the training part only. Peak memory is the uint8
    images plus the float32 outputs (about 0.9 GB for the full split).
    """
    if preprocessing not in PREPROCESSINGS:
        raise UserError(f"preprocessing must be one of {', '.join(PREPROCESSINGS)}, got {preprocessing!r}")
    raw = load_raw_split(data_dir, train_size=train_size, val_size=val_size, test_size=test_size,
                         preprocessings=(preprocessing,), download=download, progress=progress)
    preprocessor = raw.preprocessors[preprocessing]
    return Dataset(
        X_train=preprocessor.apply(raw.X_train), y_train=raw.y_train.copy(),
        X_val=preprocessor.apply(raw.X_val), y_val=raw.y_val.copy(),
        X_test=preprocessor.apply(raw.X_test), y_test=raw.y_test.copy(),
        preprocessor=preprocessor, label_names=raw.label_names,
    )


class FittedPreprocessors(Mapping):
    """mode -> Preprocessor fitted on the training rows, each fitted when first asked for.

    A study offers every mode but uses one or two: fitting "zca" takes ~16 s on the full
    training set (a 3072 x 3072 eigendecomposition), which a study that never whitens must
    not pay. "zca" reuses the "standardize" statistics when they are fitted already.
    """

    def __init__(self, rows_train: np.ndarray, modes=PREPROCESSINGS):
        unknown = [mode for mode in modes if mode not in PREPROCESSINGS]
        if unknown:
            raise UserError(f"preprocessing must be one of {', '.join(PREPROCESSINGS)}, got {unknown[0]!r}")
        self._rows, self._modes, self._fitted = rows_train, tuple(modes), {}

    def _fit(self, mode: str) -> Preprocessor:
        if mode not in self._fitted:
            if mode == "zca":
                self._fitted[mode] = fit_whitening(self._rows, self._fit("standardize"))
            else:
                self._fitted[mode] = fit_preprocessor(self._rows, mode)
        return self._fitted[mode]

    def __getitem__(self, mode: str) -> Preprocessor:
        if mode not in self._modes:
            raise KeyError(mode)
        return self._fit(mode)

    def __iter__(self):
        return iter(self._modes)

    def __len__(self) -> int:
        return len(self._modes)


@dataclass
class RawSplit(_Split):
    """The spec's split as raw pixels, for a study: X_* uint8 (N, 3072) rows, y_* int64.

    A study keeps this one uint8 copy (a quarter of float32) and a fitted
    Preprocessor per mode; each trial preprocesses its minibatches as it
    draws them, so trials may differ in preprocessing at no memory cost.
    Whitening is the exception (`training_rows`).
    """
    preprocessors: Mapping     # mode -> Preprocessor fitted on X_train (FittedPreprocessors)
    label_names: list
    _preprocessed: dict = field(default_factory=dict, repr=False, compare=False)

    def training_rows(self, mode: str):
        """(X_train, X_val, preprocessor) for `trainer.train` with preprocessing `mode`.

        Usually the uint8 rows and the mode's Preprocessor, which the trainer applies to each
        minibatch. A whitening preprocessor would multiply every minibatch by a 3072 x 3072
        matrix, about as much work as the net's own step, so for it the training and
        validation rows are whitened once, kept as float32 (4x the uint8 rows: ~600 MB for
        49,000 images), shared by every trial of the process, and preprocessor is None.
        """
        preprocessor = self.preprocessors[mode]
        if preprocessor.whitening is None:
            return self.X_train, self.X_val, preprocessor
        if mode not in self._preprocessed:
            self._preprocessed[mode] = (preprocessor.apply(self.X_train), preprocessor.apply(self.X_val))
        return (*self._preprocessed[mode], None)


def load_raw_split(data_dir=None, *, train_size=49000, val_size=1000, test_size=None,
                   preprocessings=PREPROCESSINGS, download=True, progress=True) -> RawSplit:
    """Load CIFAR-10 once, split it as `prepare_cifar10` does, keep it uint8; preprocessors are fitted
    on the training rows when first used (`FittedPreprocessors`)."""
    _check_split_sizes(train_size, val_size, test_size, NUM_TRAIN, NUM_TEST)   # fail before downloading
    folder = ensure_cifar10(data_dir, download=download, progress=progress)
    Xtr, ytr, Xte, yte = load_cifar10_uint8(folder)
    _check_split_sizes(train_size, val_size, test_size, len(Xtr), len(Xte))
    test_size = len(Xte) if test_size is None else test_size
    rows_train, rows_test = as_rows(Xtr), as_rows(Xte)          # views: the arrays are contiguous
    train, val = slice(0, train_size), slice(train_size, train_size + val_size)
    return RawSplit(
        X_train=rows_train[train], y_train=ytr[train], X_val=rows_train[val], y_val=ytr[val],
        X_test=rows_test[:test_size], y_test=yte[:test_size],
        preprocessors=FittedPreprocessors(rows_train[train], preprocessings),
        label_names=load_label_names(folder),
    )
