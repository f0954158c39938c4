"""Tests for mlp_exp.data: download safety, loader errors, preprocessing, the spec's split.

Downloads are served by a real http.server on 127.0.0.1 from tiny fake archives
in the official layout (20 images per batch); a real-data test runs when a
CIFAR-10 replica is present.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import os
import pickle
import pickletools
import shlex
import struct
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from helpers import cli_env, free_port
from mlp_exp import data, preprocessing
from mlp_exp.data import (DataError, ensure_cifar10, load_CIFAR10, load_cifar10_uint8, load_label_names,
                          prepare_cifar10, resolve_data_dir)
from mlp_exp.errors import UserError
from mlp_exp.preprocessing import Preprocessor, fit_preprocessor

PER_BATCH = 20
BATCH_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# ------------------------------------------------------------------ fakes

def write_fake_cifar(folder: Path, per_batch: int = PER_BATCH, seed: int = 0) -> dict:
    """Write the official pickle layout into `folder`; return {file name: (data uint8 (n, 3072), labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in BATCH_FILES:
        raw = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": raw,
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        batches[name] = (raw, labels)
    meta = {b"label_names": [n.encode() for n in data.DEFAULT_LABEL_NAMES],
            b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return batches


def tar_gz_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, payload in members:
            if payload is not None:
                info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return buffer.getvalue()


def fake_archive(tmp_path: Path, extra_members=()) -> tuple[bytes, dict]:
    """A cifar-10-python.tar.gz whose cifar-10-batches-py/ holds tiny batches, plus `extra_members` after them."""
    source = tmp_path / "archive_source" / data.BATCHES_FOLDER
    batches = write_fake_cifar(source)
    folder_info = tarfile.TarInfo(data.BATCHES_FOLDER)
    folder_info.type, folder_info.mode = tarfile.DIRTYPE, 0o755
    members = [(folder_info, None)]
    for path in sorted(source.iterdir()):
        members.append((tarfile.TarInfo(f"{data.BATCHES_FOLDER}/{path.name}"), path.read_bytes()))
    return tar_gz_bytes(members + list(extra_members)), batches


def md5_of(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def hwc_reference(raw: np.ndarray) -> np.ndarray:
    """Pixel by pixel from the documented layout: value of (row r, col c, channel ch) is raw[ch*1024 + r*32 + c]."""
    n = raw.shape[0]
    out = np.empty((n, 32, 32, 3), dtype=np.uint8)
    for ch in range(3):
        for r in range(32):
            out[:, r, :, ch] = raw[:, ch * 1024 + r * 32: ch * 1024 + r * 32 + 32]
    return out


def assert_one_line_naming(err: pytest.ExceptionInfo, *names) -> str:
    message = str(err.value)
    assert "\n" not in message and message.strip() == message and message
    for name in names:
        assert str(name) in message, f"{name!r} not in {message!r}"
    return message


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------- the server

class Routes(http.server.BaseHTTPRequestHandler):
    """Serves `routes[path] = (status, body, declared Content-Length)`; unknown paths are 404."""
    routes: dict = {}

    def do_GET(self):
        if self.path not in self.routes:
            self.send_error(404, "Not Found")
            return
        status, body, declared = self.routes[self.path]
        self.send_response(status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Returns serve(path, body, status=200, declared=None) -> URL; the server stops after the test."""
    handler = type("TestRoutes", (Routes,), {"routes": {}})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]

    def serve(path: str, body: bytes, status: int = 200, declared: int | None = None) -> str:
        handler.routes[path] = (status, body, len(body) if declared is None else declared)
        return f"http://{host}:{port}{path}"

    serve.base = f"http://{host}:{port}"
    yield serve
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/cifar-10-python.tar.gz"     # nothing listens: connection refused


# --------------------------------------------------------------- locating

def test_resolve_data_dir_prefers_argument_then_env_then_default(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path / "from_env"))
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir() == tmp_path / "from_env"
    monkeypatch.delenv(data.DATA_DIR_ENV)
    assert resolve_data_dir() == Path("data")


def test_resolve_data_dir_accepts_the_batches_folder_itself(tmp_path):
    assert resolve_data_dir(tmp_path / "d" / "cifar-10-batches-py") == tmp_path / "d"


def test_ensure_without_download_names_path_and_env(tmp_path):
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path / "nowhere", download=False)
    assert_one_line_naming(err, tmp_path / "nowhere" / "cifar-10-batches-py", data.DATA_DIR_ENV)
    assert not (tmp_path / "nowhere").exists()


def test_ensure_finds_existing_folder_without_network(tmp_path):
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    for given in (tmp_path, tmp_path / "cifar-10-batches-py"):
        assert ensure_cifar10(given, url=closed_port_url(), progress=False) == tmp_path / "cifar-10-batches-py"


def test_ensure_rejects_incomplete_existing_folder(tmp_path):
    write_fake_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path, url=closed_port_url(), progress=False)
    assert_one_line_naming(err, tmp_path / "cifar-10-batches-py", "data_batch_4")


# --------------------------------------------------------------- download

def test_download_verifies_extracts_and_loads(server, tmp_path):
    payload, batches = fake_archive(tmp_path)
    url = server("/cifar-10-python.tar.gz", payload)
    data_dir = tmp_path / "new" / "data"

    folder = ensure_cifar10(data_dir, url=url, md5=md5_of(payload), progress=False)

    assert folder == data_dir / "cifar-10-batches-py"
    assert entries(data_dir) == ["cifar-10-batches-py"]     # temp archive and extract dir are gone
    Xtr, ytr, Xte, yte = load_cifar10_uint8(folder)
    raw_train = np.concatenate([batches[name][0] for name in BATCH_FILES[:5]])
    np.testing.assert_array_equal(Xtr, hwc_reference(raw_train))
    np.testing.assert_array_equal(ytr, sum((batches[name][1] for name in BATCH_FILES[:5]), []))
    np.testing.assert_array_equal(Xte, hwc_reference(batches["test_batch"][0]))
    np.testing.assert_array_equal(yte, batches["test_batch"][1])
    # a second call finds the folder and does not download again
    assert ensure_cifar10(data_dir, url=closed_port_url(), progress=False) == folder


def test_download_progress_bar_goes_to_stderr(server, tmp_path, capsys):
    payload, _ = fake_archive(tmp_path)
    url = server("/cifar-10-python.tar.gz", payload)
    ensure_cifar10(tmp_path / "data", url=url, md5=md5_of(payload), progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "cifar-10-python.tar.gz" in captured.err


def test_bad_checksum_extracts_nothing_and_touches_nothing(server, tmp_path):
    payload, _ = fake_archive(tmp_path)
    url = server("/cifar-10-python.tar.gz", payload)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "keep.txt").write_text("mine")

    with pytest.raises(DataError) as err:
        ensure_cifar10(data_dir, url=url, md5="0" * 32, progress=False)

    message = assert_one_line_naming(err, url, md5_of(payload))
    assert "checksum" in message
    assert entries(data_dir) == ["keep.txt"]
    assert (data_dir / "keep.txt").read_text() == "mine"


def test_short_body_against_content_length_is_truncated(server, tmp_path):
    payload, _ = fake_archive(tmp_path)
    url = server("/cifar-10-python.tar.gz", payload[: len(payload) // 2], declared=len(payload))
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path / "data", url=url, md5=md5_of(payload), progress=False)
    assert "truncated" in assert_one_line_naming(err, url, len(payload) // 2, len(payload))
    assert entries(tmp_path / "data") == []


def test_cut_gzip_is_reported_and_leaves_nothing(server, tmp_path):
    # the checksum matches the cut file, so only the gzip/tar reader can notice
    payload, _ = fake_archive(tmp_path)
    cut = payload[: len(payload) * 2 // 3]
    url = server("/cifar-10-python.tar.gz", cut)
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path / "data", url=url, md5=md5_of(cut), progress=False)
    assert "truncated" in assert_one_line_naming(err, url)
    assert entries(tmp_path / "data") == []


def test_not_a_gzip_is_reported(server, tmp_path):
    junk = b"<html>captive portal</html>" * 10
    url = server("/cifar-10-python.tar.gz", junk)
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path / "data", url=url, md5=None, progress=False)
    assert_one_line_naming(err, url)
    assert entries(tmp_path / "data") == []


def test_http_404(server, tmp_path):
    url = server.base + "/missing.tar.gz"
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path / "data", url=url, progress=False)
    assert_one_line_naming(err, url, "404")
    assert entries(tmp_path / "data") == []


def test_http_500(server, tmp_path):
    url = server("/broken.tar.gz", b"oops", status=500)
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path / "data", url=url, progress=False)
    assert_one_line_naming(err, url, "500")


def test_unreachable_url_suggests_data_dir(tmp_path):
    url = closed_port_url()
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path / "data", url=url, progress=False)
    assert_one_line_naming(err, url, "--data-dir", data.DATA_DIR_ENV)
    assert not (tmp_path / "data").exists()     # the data dir it created for the download is removed again


def test_archive_without_batches_folder_is_wrong_layout(server, tmp_path):
    payload = tar_gz_bytes([(tarfile.TarInfo("something_else/readme.txt"), b"hello")])
    url = server("/cifar-10-python.tar.gz", payload)
    with pytest.raises(DataError) as err:
        ensure_cifar10(tmp_path / "data", url=url, md5=md5_of(payload), progress=False)
    assert "layout" in assert_one_line_naming(err, url)
    assert entries(tmp_path / "data") == []


def _evil_member(kind: str, outside: Path) -> tuple[tarfile.TarInfo, bytes | None]:
    if kind == "dotdot":
        return tarfile.TarInfo("../evil"), b"pwned"
    if kind == "nested_dotdot":
        return tarfile.TarInfo("cifar-10-batches-py/../../evil"), b"pwned"
    if kind == "absolute":
        return tarfile.TarInfo(str(outside / "evil")), b"pwned"
    info = tarfile.TarInfo("cifar-10-batches-py/evil")
    info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
    info.linkname = str(outside / "target") if kind == "symlink" else "../../target"
    return info, None


@pytest.mark.parametrize("kind", ["dotdot", "nested_dotdot", "absolute", "symlink", "hardlink"])
def test_malicious_archive_is_rejected_without_writing_outside(server, tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target").write_text("original")
    payload, _ = fake_archive(tmp_path, extra_members=[_evil_member(kind, outside)])
    url = server("/cifar-10-python.tar.gz", payload)
    data_dir = tmp_path / "a" / "data"

    with pytest.raises(DataError) as err:
        ensure_cifar10(data_dir, url=url, md5=md5_of(payload), progress=False)

    assert "unsafe" in assert_one_line_naming(err, url)
    assert entries(data_dir) == []                       # no half-extracted folder moved into place
    assert entries(outside) == ["target"] and (outside / "target").read_text() == "original"
    assert not (tmp_path / "a" / "evil").exists() and not (tmp_path / "evil").exists()


# ---------------------------------------------------------------- loading

@pytest.fixture
def fake_folder(tmp_path) -> tuple[Path, dict]:
    folder = tmp_path / "cifar-10-batches-py"
    return folder, write_fake_cifar(folder)


def test_load_CIFAR10_is_the_float64_spec_api(fake_folder):
    folder, batches = fake_folder
    Xtr, Ytr, Xte, Yte = load_CIFAR10(folder)
    assert Xtr.shape == (5 * PER_BATCH, 32, 32, 3) and Xtr.dtype == np.float64
    assert Xte.shape == (PER_BATCH, 32, 32, 3) and Xte.dtype == np.float64
    assert Ytr.shape == (5 * PER_BATCH,) and Yte.shape == (PER_BATCH,)
    assert Ytr.dtype.kind == "i" and Yte.dtype.kind == "i"
    np.testing.assert_array_equal(Xte, hwc_reference(batches["test_batch"][0]).astype(np.float64))


def test_load_uint8_is_contiguous_so_flattening_does_not_copy(fake_folder):
    Xtr, _, Xte, _ = load_cifar10_uint8(fake_folder[0])
    assert Xtr.dtype == np.uint8 and Xtr.flags.c_contiguous and Xte.flags.c_contiguous


def test_label_names_from_meta_and_fallback(fake_folder):
    folder, _ = fake_folder
    assert load_label_names(folder)[:2] == ["airplane", "automobile"]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a%d" % i for i in range(10)]}))
    assert load_label_names(folder) == [f"a{i}" for i in range(10)]
    (folder / "batches.meta").unlink()
    assert load_label_names(folder) == list(data.DEFAULT_LABEL_NAMES)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar10_uint8(tmp_path / "absent" / "cifar-10-batches-py")
    assert_one_line_naming(err, tmp_path / "absent" / "cifar-10-batches-py")


def test_missing_batch_file(fake_folder):
    folder, _ = fake_folder
    (folder / "test_batch").unlink()
    with pytest.raises(DataError) as err:
        load_cifar10_uint8(folder)
    assert_one_line_naming(err, folder / "test_batch")


def test_truncated_batch_file(fake_folder):
    folder, _ = fake_folder
    path = folder / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError) as err:
        load_cifar10_uint8(folder)
    assert "delete it" in assert_one_line_naming(err, path)


def _rewrite_batch(path: Path, protocol: int = 2, **changes):
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    for key, value in changes.items():
        if value is None:
            del batch[key.encode()]
        else:
            batch[key.encode()] = value
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("changes", [
    {"labels": None},                                                    # no b'labels'
    {"data": None},                                                      # no b'data'
    {"data": np.zeros((PER_BATCH, 3071), dtype=np.uint8)},               # wrong width
    {"data": np.zeros((PER_BATCH, 3072), dtype=np.float32)},             # wrong dtype
    {"labels": [0] * (PER_BATCH - 1)},                                   # labels/images mismatch
    {"labels": [10] * PER_BATCH},                                        # labels out of 0..9
], ids=["no-labels", "no-data", "width", "dtype", "count", "range"])
def test_wrong_batch_layout(fake_folder, changes):
    folder, _ = fake_folder
    _rewrite_batch(folder / "data_batch_2", **changes)
    with pytest.raises(DataError) as err:
        load_cifar10_uint8(folder)
    assert_one_line_naming(err, folder / "data_batch_2")


def test_batch_that_is_not_a_dict(fake_folder):
    folder, _ = fake_folder
    (folder / "data_batch_1").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError) as err:
        load_cifar10_uint8(folder)
    assert_one_line_naming(err, folder / "data_batch_1")


# ------------------------------------------------------ untrusted pickles

class Payload:
    """Unpickling this runs `touch marker`: what a batch planted in ./data could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


SYSTEM = f"{os.system.__module__}.{os.system.__name__}"     # how pickle names os.system: posix.system


def plant(path: Path, marker: Path, key: bytes, protocol: int = 2, as_object_array: bool = False):
    """Rewrite the pickle at `path` with a Payload under `key`; the batch stays otherwise valid,
    so an unrestricted load would succeed after running it."""
    batch = pickle.loads(path.read_bytes(), encoding="bytes")
    payload = Payload(marker)
    batch[key] = np.array([payload, b"x"], dtype=object) if as_object_array else payload
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("as_object_array", [False, True], ids=["object", "in-object-array"])
def test_malicious_batch_is_refused_without_running_it(fake_folder, tmp_path, protocol, as_object_array):
    folder, _ = fake_folder
    marker = tmp_path / "pwned"
    plant(folder / "data_batch_1", marker, b"batch_label", protocol, as_object_array)
    with pytest.raises(DataError) as err:
        load_cifar10_uint8(folder)
    message = assert_one_line_naming(err, folder / "data_batch_1", f"imports {SYSTEM}", "refusing", "delete it")
    assert "truncated" not in message
    assert not marker.exists()


def test_malicious_meta_is_refused_without_running_it(fake_folder, tmp_path):
    # the names are cosmetic and an unreadable meta falls back to the standard ones, but a planted
    # pickle must not fall back quietly: the user has to learn that the folder was tampered with
    folder, _ = fake_folder
    marker = tmp_path / "pwned"
    plant(folder / "batches.meta", marker, b"num_vis")
    with pytest.raises(DataError) as err:
        load_label_names(folder)
    assert_one_line_naming(err, folder / "batches.meta", f"imports {SYSTEM}")
    with pytest.raises(DataError):
        prepare_cifar10(folder, train_size=10, val_size=10, download=False, progress=False)
    assert not marker.exists()


def test_malicious_batch_through_the_cli(tmp_path):
    from fake_cifar import write_fake_cifar10
    from stores import TINY, run_search
    write_fake_cifar10(tmp_path / "data", per_batch=80, num_test=50)
    marker = tmp_path / "pwned"
    plant(tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1", marker, b"filenames", protocol=4)
    result = run_search("--trials", "1", *TINY, cwd=tmp_path)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "data_batch_1" in lines[0] and f"imports {SYSTEM}" in lines[0], lines[0]
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_batches_pickled_at_any_python3_protocol_load(fake_folder, protocol):
    folder, batches = fake_folder
    for name in BATCH_FILES + ["batches.meta"]:
        _rewrite_batch(folder / name, protocol=protocol)
    Xtr, ytr, Xte, yte = load_cifar10_uint8(folder)
    np.testing.assert_array_equal(Xte, hwc_reference(batches["test_batch"][0]))
    np.testing.assert_array_equal(yte, batches["test_batch"][1])
    assert load_label_names(folder) == list(data.DEFAULT_LABEL_NAMES)


def py2_cpickle(obj) -> bytes:
    """`obj` as Python 2's cPickle.dump(obj, f, 2) wrote the official archive: str as BINSTRING,
    arrays through numpy.core.multiarray._reconstruct (numpy 1's name). Handles what a batch holds."""
    def put(x) -> bytes:
        if x is None:
            return b"N"
        if x is False:
            return b"\x89"
        if isinstance(x, int):
            return b"K" + bytes([x]) if 0 <= x < 256 else b"J" + struct.pack("<i", x)
        if isinstance(x, (bytes, str)):
            raw = x.encode("latin1") if isinstance(x, str) else x
            return (b"U" + bytes([len(raw)]) if len(raw) < 256 else b"T" + struct.pack("<I", len(raw))) + raw
        if isinstance(x, tuple):
            return b"(" + b"".join(map(put, x)) + b"t"
        if isinstance(x, list):
            return b"](" + b"".join(map(put, x)) + b"e"
        if isinstance(x, dict):
            return b"}(" + b"".join(put(k) + put(v) for k, v in x.items()) + b"u"
        assert isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.flags.c_contiguous
        dtype = b"cnumpy\ndtype\n" + put(("u1", 0, 1)) + b"R" + put((3, "|", None, None, None, -1, -1, 0)) + b"b"
        return (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n" + put((0,)) + put("b") + b"tR"
                + b"(" + put(1) + put(x.shape) + dtype + put(False) + put(x.tobytes()) + b"tb")
    return b"\x80\x02" + put(obj) + b"."


def test_batches_in_the_official_python2_format_load(fake_folder):
    folder, batches = fake_folder
    for name, (raw, labels) in batches.items():
        (folder / name).write_bytes(py2_cpickle({"data": raw, "labels": labels, "batch_label": name,
                                                 "filenames": [f"img_{i}.png" for i in range(len(labels))]}))
    (folder / "batches.meta").write_bytes(py2_cpickle({"label_names": list(data.DEFAULT_LABEL_NAMES),
                                                       "num_cases_per_batch": PER_BATCH, "num_vis": 3072}))
    ops = {op.name: arg for op, arg, _ in pickletools.genops((folder / "test_batch").read_bytes())}
    assert ops["GLOBAL"] and "STACK_GLOBAL" not in ops and "BINUNICODE" not in ops      # the Python 2 spelling
    Xtr, ytr, Xte, yte = load_cifar10_uint8(folder)
    np.testing.assert_array_equal(Xte, hwc_reference(batches["test_batch"][0]))
    np.testing.assert_array_equal(ytr[:PER_BATCH], batches["data_batch_1"][1])
    assert load_label_names(folder) == list(data.DEFAULT_LABEL_NAMES)


# ---------------------------------------------------------- preprocessing

@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(50, 32, 32, 3), dtype=np.uint8)


@pytest.fixture(autouse=False)
def small_chunks(monkeypatch):
    monkeypatch.setattr(preprocessing, "_CHUNK_ROWS", 7)     # 50 rows -> several chunks and a ragged last one


def test_mean_image_matches_numpy_reference(images, small_chunks):
    train, val = images[:40], images[40:]
    pre = fit_preprocessor(train, "mean_image")
    mean_image = np.mean(train.reshape(40, -1).astype(np.float64), axis=0)    # the spec's reference
    assert pre.mean.shape == (3072,) and pre.mean.dtype == np.float32
    np.testing.assert_allclose(pre.mean, mean_image, rtol=1e-6)
    np.testing.assert_array_equal(pre.scale, np.ones(3072, dtype=np.float32))
    for X in (train, val):
        out = pre.apply(X)
        assert out.shape == (len(X), 3072) and out.dtype == np.float32
        np.testing.assert_allclose(out, X.reshape(len(X), -1) - mean_image, atol=1e-4)


def test_apply_on_uint8_matches_float64_reference(images, small_chunks):
    pre = fit_preprocessor(images, "standardize")
    rows64 = images.reshape(len(images), -1).astype(np.float64)
    reference = (rows64 - pre.mean.astype(np.float64)) / pre.scale.astype(np.float64)
    for X in (images, images.reshape(len(images), -1), images.astype(np.float64)):
        out = pre.apply(X)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-5)


def test_standardize_is_unit_normal_on_train_and_its_mirror(images):
    pre = fit_preprocessor(images, "standardize")
    augmented = pre.apply(np.concatenate([images, images[:, :, ::-1, :]]))
    np.testing.assert_allclose(augmented.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(augmented.std(axis=0), 1, atol=1e-4)
    # unflipped training images alone are close to unit normal too
    plain = pre.apply(images)
    assert abs(plain.mean()) < 0.05 and abs(plain.std() - 1) < 0.05


def test_standardize_is_mirror_symmetric(images):
    pre = fit_preprocessor(images, "standardize")
    mean, scale = pre.mean.reshape(32, 32, 3), pre.scale.reshape(32, 32, 3)
    np.testing.assert_array_equal(mean, mean[:, ::-1, :])
    np.testing.assert_array_equal(scale, scale[:, ::-1, :])
    assert not np.allclose(mean, mean[::-1, :, :])     # only left-right, not up-down
    # so flipping then preprocessing equals preprocessing then flipping
    flipped = pre.apply(images[:, :, ::-1, :]).reshape(-1, 32, 32, 3)
    np.testing.assert_array_equal(flipped, pre.apply(images).reshape(-1, 32, 32, 3)[:, :, ::-1, :])


def test_standardize_floors_constant_pixels(images):
    constant = images.copy()
    constant[:, 5, :, 1] = 77        # a whole row of one channel never varies (mirror included)
    pre = fit_preprocessor(constant, "standardize")
    assert np.all(pre.scale > 0)
    out = pre.apply(np.full((1, 32, 32, 3), 200, dtype=np.uint8))
    assert np.all(np.isfinite(out))
    assert np.abs(out).max() < 1e6


def test_fit_rejects_unknown_mode(images):
    with pytest.raises(UserError) as err:
        fit_preprocessor(images, "whiten")
    assert_one_line_naming(err, "whiten", "mean_image", "standardize")


def test_preprocessor_round_trip_and_immutability(images):
    pre = fit_preprocessor(images, "standardize")
    again = Preprocessor.from_arrays({k: v.copy() for k, v in pre.to_arrays().items()})
    assert set(pre.to_arrays()) == {"mean", "scale"}
    np.testing.assert_array_equal(again.apply(images), pre.apply(images))
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.mean = np.zeros(3072)
    with pytest.raises(ValueError):
        pre.mean[0] = 1.0
    with pytest.raises(ValueError):
        pre.apply(images[:, :16])       # 1536 values per image, not 3072



@pytest.mark.parametrize("dtype", [np.uint8, np.float64, np.float32])
def test_preprocessor_apply_is_exactly_the_float32_formula(images, dtype, monkeypatch):
    """apply casts, then subtracts and divides in float32: bit for bit (x - mean) / scale in float32,
    for every input dtype, across chunk boundaries, and into a caller's buffer (the trainer's path)."""
    monkeypatch.setattr(preprocessing, "_CHUNK_ROWS", 7)           # several chunks and a ragged last one
    pre = fit_preprocessor(images, "standardize")
    X = images.reshape(len(images), -1).astype(dtype)
    expected = (X.astype(np.float32) - pre.mean) / pre.scale
    assert expected.dtype == np.float32
    np.testing.assert_array_equal(pre.apply(X), expected)
    buffer = np.full(X.shape, np.nan, np.float32)
    assert pre.apply(X, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, expected)

# -------------------------------------------------------------- splitting

def test_prepare_splits_like_the_spec(fake_folder):
    folder, _ = fake_folder
    Xtr, ytr, Xte, yte = load_cifar10_uint8(folder)
    ds = prepare_cifar10(folder.parent, train_size=70, val_size=20, test_size=10, download=False)
    assert ds.X_train.shape == (70, 3072) and ds.X_val.shape == (20, 3072) and ds.X_test.shape == (10, 3072)
    assert {a.dtype for a in (ds.X_train, ds.X_val, ds.X_test)} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(ds.y_train, ytr[:70])
    np.testing.assert_array_equal(ds.y_val, ytr[70:90])
    np.testing.assert_array_equal(ds.y_test, yte[:10])
    # fitted on the training part only, then applied to each split
    mean_image = Xtr[:70].reshape(70, -1).mean(axis=0)
    np.testing.assert_allclose(ds.preprocessor.mean, mean_image, rtol=1e-6)
    np.testing.assert_allclose(ds.X_val, Xtr[70:90].reshape(20, -1) - mean_image, atol=1e-4)
    np.testing.assert_allclose(ds.X_test, Xte[:10].reshape(10, -1) - mean_image, atol=1e-4)
    assert ds.label_names == list(data.DEFAULT_LABEL_NAMES)


def test_prepare_default_test_size_is_all_and_standardize_works(fake_folder):
    folder, _ = fake_folder
    ds = prepare_cifar10(folder, train_size=80, val_size=20, preprocessing="standardize", download=False)
    assert ds.X_test.shape == (PER_BATCH, 3072)
    assert abs(float(ds.X_train.mean())) < 0.05


@pytest.mark.parametrize("sizes, named", [
    (dict(train_size=49000, val_size=2000), ["49000", "2000", "50000"]),
    (dict(train_size=0, val_size=1000), ["train_size", "0"]),
    (dict(train_size=100, val_size=-1), ["val_size", "-1"]),
    (dict(train_size=100, val_size=10, test_size=10001), ["10001", "10000"]),
])
def test_prepare_rejects_bad_sizes_before_touching_disk(tmp_path, sizes, named):
    # download=True with an absent data dir: had it not failed first, it would try the network
    with pytest.raises(UserError) as err:
        prepare_cifar10(tmp_path / "absent", download=True, progress=False, **sizes)
    assert_one_line_naming(err, *named)
    assert not (tmp_path / "absent").exists()


def test_prepare_rejects_sizes_beyond_a_small_replica(fake_folder):
    folder, _ = fake_folder
    with pytest.raises(UserError) as err:
        prepare_cifar10(folder, train_size=90, val_size=20, download=False)
    assert_one_line_naming(err, "110", "100")


def test_prepare_rejects_unknown_preprocessing(fake_folder):
    with pytest.raises(UserError) as err:
        prepare_cifar10(fake_folder[0], train_size=10, val_size=10, preprocessing="pca", download=False)
    assert_one_line_naming(err, "pca")


def test_import_does_not_touch_disk_or_network(tmp_path):
    # a fresh interpreter in an empty directory: importing must not create ./data or anything else
    env = cli_env()
    env.pop(data.DATA_DIR_ENV, None)
    subprocess.run([sys.executable, "-c", "import mlp_exp.data"], cwd=tmp_path, env=env, check=True)
    assert entries(tmp_path) == []


# -------------------------------------------------------------- real data

def _real_batches_folder() -> Path | None:
    candidates = []
    if os.environ.get(data.DATA_DIR_ENV):
        candidates.append(Path(os.environ[data.DATA_DIR_ENV]))
    candidates.append(Path(__file__).resolve().parent.parent / "data")
    for candidate in candidates:
        try:
            return ensure_cifar10(candidate, download=False)
        except DataError:
            continue
    return None


REAL_FOLDER = _real_batches_folder()
needs_real_data = pytest.mark.skipif(
    REAL_FOLDER is None,
    reason=f"no CIFAR-10 replica in ${data.DATA_DIR_ENV} or <repo>/data/cifar-10-batches-py")


@pytest.fixture(scope="module")
def real_float64():
    return load_CIFAR10(REAL_FOLDER)


@needs_real_data
def test_real_load_CIFAR10_shapes_and_labels(real_float64):
    Xtr, Ytr, Xte, Yte = real_float64
    assert Xtr.shape == (50000, 32, 32, 3) and Xtr.dtype == np.float64
    assert Xte.shape == (10000, 32, 32, 3) and Xte.dtype == np.float64
    assert Ytr.shape == (50000,) and Yte.shape == (10000,)
    assert Ytr.dtype.kind == "i" and Yte.dtype.kind == "i"
    assert set(np.unique(Ytr)) == set(range(10)) and set(np.unique(Yte)) == set(range(10))
    assert Xtr.min() >= 0 and Xtr.max() <= 255 and Xtr.max() > 200
    assert len(load_label_names(REAL_FOLDER)) == 10


def test_real_replica_passes_the_restricted_unpickler(cifar10_dir):
    Xtr, ytr, Xte, yte = load_cifar10_uint8(cifar10_dir)       # every batch, through the restricted unpickler
    assert Xtr.shape == (50000, 32, 32, 3) and Xte.shape == (10000, 32, 32, 3)
    assert load_label_names(cifar10_dir) == list(data.DEFAULT_LABEL_NAMES)   # a refused meta would raise


@needs_real_data
def test_real_prepare_matches_the_spec_preprocessing(real_float64):
    Xtr, Ytr, Xte, Yte = real_float64
    ds = prepare_cifar10(REAL_FOLDER, download=False, progress=False)
    assert ds.X_train.shape == (49000, 3072) and ds.X_val.shape == (1000, 3072)
    assert ds.X_test.shape == (10000, 3072)
    assert ds.y_train.shape == (49000,) and ds.y_val.shape == (1000,) and ds.y_test.shape == (10000,)
    assert ds.X_train.dtype == np.float32
    # the spec: X_val = X_train[49000:50000], mean_image over the first 49000, X -= mean_image
    rows = Xtr.reshape(50000, -1)
    mean_image = np.mean(rows[:49000], axis=0)
    np.testing.assert_allclose(ds.X_train[:500], rows[:500] - mean_image, atol=1e-3)
    np.testing.assert_allclose(ds.X_val, rows[49000:] - mean_image, atol=1e-3)
    np.testing.assert_allclose(ds.X_test[:500], Xte.reshape(10000, -1)[:500] - mean_image, atol=1e-3)
    np.testing.assert_array_equal(ds.y_val, Ytr[49000:])
    np.testing.assert_array_equal(ds.y_test, Yte)
