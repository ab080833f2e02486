"""Artifacts on a local folder or object storage: the few file operations shopseq needs, through fsspec.

Every artifact the driver and the training ranks exchange (the gold schema
artifact, checkpoints, ``history.json``, evaluation and benchmark reports) is
read and written here, so ``app.artifact_root`` may be a local folder, a
``file://`` URI or an object-store URI (``s3://bucket/prefix``, ``gs://``,
``abfs://``, ... with the filesystem's fsspec package installed: ``s3fs``,
``gcsfs``, ``adlfs``).

* A plain path or ``file://`` URI is a local file: writes go to a temporary
  file in the same folder, then ``os.replace`` (a reader never sees half a file).
* Anything else is written with one PUT of the whole object (:func:`atomic_write`
  buffers it first): an object store makes an object visible only when it is
  complete, so readers see the old object or the new one, never a part.
* Credentials and endpoints are not shopseq config: the filesystem package
  reads its standard ones (for S3: ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
  ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for
  MinIO and other S3 APIs, or an instance role), and fsspec's own
  ``FSSPEC_<PROTOCOL>_<OPTION>`` variables (e.g. ``FSSPEC_S3_ENDPOINT_URL``).

Paths are strings. Folders are joined with ``/`` for URIs and ``os.path.join``
for local paths (:func:`join`); an object store has no folders, so
:func:`makedirs` does nothing there and :func:`listdir` lists the objects
directly under a prefix.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
from typing import IO, Any, Iterator

log = logging.getLogger(__name__)

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
_FILE_URI = re.compile(r"^file://", re.IGNORECASE)


class StorageError(ValueError):
    """A location that cannot be used (unknown protocol, its filesystem package missing), as one sentence."""


# --------------------------------------------------------------------------- locations


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``<scheme>://...``) rather than a plain local path."""
    return bool(_URI.match(str(path)))


def local_path(path: str) -> str | None:
    """The local file system path of a plain path or ``file://`` URI; None for any other URI."""
    path = str(path)
    if not is_uri(path):
        return path
    if _FILE_URI.match(path):
        return path[len("file://") :] or "/"
    return None


def is_local(path: str) -> bool:
    """Whether ``path`` is on this machine's file system (a plain path or a ``file://`` URI)."""
    return local_path(path) is not None


def join(base: str, *parts: str) -> str:
    """``base`` and ``parts`` joined: with ``/`` for a URI (no doubled slashes), ``os.path.join`` for a local path."""
    if not is_uri(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])


def absolute(path: str) -> str:
    """A local path made absolute; a URI unchanged."""
    return path if is_uri(path) else os.path.abspath(path)


def check_location(path: str) -> str | None:
    """What is wrong with ``path`` as an artifact location (a phrase), or None when fsspec can open it.

    A local path is always fine; a URI needs a protocol fsspec knows and its
    filesystem package installed (``s3fs`` for ``s3://``).
    """
    if is_local(path):
        return None
    import fsspec
    from fsspec.registry import known_implementations

    protocol = path.split("://", 1)[0].lower()
    if protocol not in known_implementations:
        return f"unknown storage protocol {protocol!r} (fsspec knows {', '.join(sorted(p for p in known_implementations if p.isalpha())[:12])}, ...)"
    try:
        fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        return f"{protocol}:// needs its fsspec filesystem package: {known_implementations[protocol].get('err') or exc}"
    return None


def _remote(path: str) -> tuple[Any, str]:
    """The fsspec filesystem of a URI and the path inside it (listing caches dropped: other processes write too)."""
    import fsspec

    problem = check_location(path)
    if problem:
        raise StorageError(f"{path}: {problem}")
    fs, inner = fsspec.core.url_to_fs(path)
    fs.invalidate_cache(inner)  # a rank on another machine may have written since this process last listed
    return fs, inner


# --------------------------------------------------------------------------- queries


def exists(path: str) -> bool:
    """Whether a file or folder (an object or a non-empty prefix) is at ``path``."""
    local = local_path(path)
    if local is not None:
        return os.path.exists(local)
    fs, inner = _remote(path)
    return bool(fs.exists(inner))


def isfile(path: str) -> bool:
    """Whether a file (an object) is at ``path``."""
    local = local_path(path)
    if local is not None:
        return os.path.isfile(local)
    fs, inner = _remote(path)
    return bool(fs.isfile(inner))


def listdir(folder: str) -> list[str]:
    """The names of the files directly in ``folder``, sorted; [] when there is no such folder."""
    local = local_path(folder)
    if local is not None:
        if not os.path.isdir(local):
            return []
        return sorted(n for n in os.listdir(local) if os.path.isfile(os.path.join(local, n)))
    fs, inner = _remote(folder)
    try:
        entries = fs.ls(inner, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file")


# --------------------------------------------------------------------------- reading


def read_bytes(path: str) -> bytes:
    """The whole file at ``path`` (FileNotFoundError when there is none)."""
    local = local_path(path)
    if local is not None:
        with open(local, "rb") as fh:
            return fh.read()
    fs, inner = _remote(path)
    return bytes(fs.cat_file(inner))


def read_text(path: str) -> str:
    """The file at ``path`` as UTF-8 text."""
    return read_bytes(path).decode("utf-8")


def read_json(path: str) -> Any:
    """The JSON document at ``path``."""
    return json.loads(read_bytes(path))


def load_torch(path: str, map_location: Any = "cpu") -> Any:
    """A ``torch.save``'d object (a checkpoint's state) read from ``path``."""
    import torch

    local = local_path(path)
    source: Any = local if local is not None else io.BytesIO(read_bytes(path))
    return torch.load(source, map_location=map_location, weights_only=False)


# --------------------------------------------------------------------------- writing


def makedirs(folder: str) -> None:
    """Create a local folder and its parents; nothing to do on an object store (no folders there)."""
    local = local_path(folder)
    if local is not None:
        os.makedirs(local, exist_ok=True)


@contextlib.contextmanager
def atomic_write(path: str) -> Iterator[IO[bytes]]:
    """A binary file object whose content replaces ``path`` only when the block ends without an error.

    Local: a temporary file beside ``path`` (parents created), then
    ``os.replace``; on an error the temporary file is removed and ``path`` is
    untouched. Object store: the bytes are buffered and written with one PUT.
    """
    local = local_path(path)
    if local is None:
        buffer = io.BytesIO()
        yield buffer
        fs, inner = _remote(path)
        fs.pipe_file(inner, buffer.getvalue())
        return
    folder = os.path.dirname(os.path.abspath(local))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(local)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
        os.replace(tmp, local)  # atomic: a reader never sees half a file
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (:func:`atomic_write`)."""
    with atomic_write(path) as fh:
        fh.write(data)


def write_text(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, data: Any, **dump: Any) -> None:
    """Replace ``path`` with ``data`` as JSON (``dump``: :func:`json.dumps` options such as ``indent``) atomically."""
    write_text(path, json.dumps(data, **dump))


def torch_bytes(state: Any) -> bytes:
    """``state`` serialised by ``torch.save`` (to write the same checkpoint under several names)."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def save_torch(path: str, state: Any) -> None:
    """``torch.save(state)`` to ``path`` atomically."""
    write_bytes(path, torch_bytes(state))


@contextlib.contextmanager
def local_folder(folder: str) -> Iterator[str]:
    """A local folder holding the files directly in ``folder``: itself when local, else a temporary copy (removed after the block).

    For tools that only take a local folder (``MlflowClient.log_artifacts``).
    """
    local = local_path(folder)
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="shopseq-artifacts-") as tmp:
        for name in listdir(folder):
            with open(os.path.join(tmp, name), "wb") as fh:
                fh.write(read_bytes(join(folder, name)))
        yield tmp


# --------------------------------------------------------------------------- moving


def move_files(folder: str, names: list[str], dest: str) -> None:
    """Move the files ``names`` of ``folder`` into the folder ``dest`` (created when local).

    Local: one ``os.replace`` each (a rename). Object store: copy then delete
    per object; a stop in between leaves a file in both places, never in neither.
    """
    makedirs(dest)
    for name in names:
        src, dst = join(folder, name), join(dest, name)
        local_src, local_dst = local_path(src), local_path(dst)
        if local_src is not None and local_dst is not None:
            os.replace(local_src, local_dst)
            continue
        fs, inner_src = _remote(src)
        _, inner_dst = _remote(dst)
        fs.copy(inner_src, inner_dst)
        fs.rm_file(inner_src)
