"""Local-disk storage for plain paths and ``file://`` URIs."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from primer.storage.base import (
    AccessDeniedError,
    ObjectInfo,
    ObjectNotFoundError,
    Storage,
    StorageError,
    normalize_key,
)

_TMP_PREFIX = ".primer-tmp-"


class LocalStorage(Storage):
    """Objects are files under :attr:`root`; writes go to a temp file, then ``os.replace``."""

    local = True

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).expanduser().absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        key = normalize_key(key)
        return self.root / key if key else self.root

    def url(self, key: str) -> str:
        return str(self._path(key))

    def open_read(self, key: str, offset: int = 0) -> BinaryIO:
        path = self._path(key)
        try:
            f = open(path, "rb")  # noqa: SIM115 - the caller closes it
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key!r} in {self.uri}") from None
        except IsADirectoryError:
            raise ObjectNotFoundError(f"{path} is a directory, not an object") from None
        except PermissionError as exc:
            raise AccessDeniedError(f"cannot read {path}: {exc.strerror}") from None
        if offset:
            f.seek(offset)
        return f

    @contextlib.contextmanager
    def open_write(self, key: str, durable: bool = True) -> Iterator[BinaryIO]:
        with _publish(self._path(key)) as fd, os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())

    def write_bytes(self, key: str, data: bytes, durable: bool = True) -> None:
        # Straight to the descriptor: five system calls for a small object (a cache entry)
        # where the buffered file of open_write makes eleven, and each costs far more than its
        # bytes while other processes make system calls too (bench/generation.py).
        with _publish(self._path(key)) as fd:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if durable:
                    os.fsync(fd)
            finally:
                os.close(fd)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key!r} in {self.uri}") from None
        if not path.is_file():
            raise ObjectNotFoundError(f"{path} is a directory, not an object")
        return ObjectInfo(normalize_key(key), st.st_size)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # A key prefix may end inside a file name ("part-0" matches "part-00001.parquet"),
        # so walk the deepest directory the prefix names fully and filter by string.
        prefix = prefix.replace("\\", "/").lstrip("/")
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self._path(base_dir)
        if not start.is_dir():
            return
        found = []
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames.sort()
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue  # an unpublished write, not an object
                full = Path(dirpath) / name
                key = full.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):  # deleted while listing
                        found.append(ObjectInfo(key, full.stat().st_size))
        yield from sorted(found, key=lambda o: o.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Prune now-empty parent directories so a deleted prefix leaves no trace.
        parent = path.parent
        while parent != self.root and self.root in parent.parents:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def copy(self, src: str, dst: str) -> None:
        with self.open_read(src) as fin, self.open_write(dst) as fout:
            shutil.copyfileobj(fin, fout, 8 << 20)

    def move(self, src: str, dst: str) -> None:
        src_path, dst_path = self._path(src), self._path(dst)
        if not src_path.is_file():
            raise ObjectNotFoundError(f"no object {src!r} in {self.uri}")
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src_path, dst_path)
        self.delete(src)  # prunes the emptied directories


# Temp names: a per-process random prefix and a counter, not mkstemp's random name per file.
# A forked child shares both with its parent, so a taken name is skipped (O_EXCL).
_TMP_TAG = f"{_TMP_PREFIX}{secrets.token_hex(4)}-"
_tmp_counter = itertools.count()


def _create_temp(path: Path) -> tuple[int, str]:
    """A new, empty, exclusively created temp file beside ``path`` (its folders made when
    missing), readable by every uid like any published object, whatever the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    parent = str(path.parent)
    while True:
        tmp = f"{parent}/{_TMP_TAG}{next(_tmp_counter)}"
        try:
            fd = os.open(tmp, flags, 0o644)
        except FileExistsError:
            continue
        except FileNotFoundError:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _write_error(exc, path) from None
            continue
        except OSError as exc:
            raise _write_error(exc, path) from None
        os.fchmod(fd, 0o644)
        return fd, tmp


@contextlib.contextmanager
def _publish(path: Path) -> Iterator[int]:
    """A temp file's descriptor beside ``path``, for the block to write and close; the file
    becomes ``path`` when the block exits cleanly, and is removed when it raises (an OS error
    then becomes the storage error that says where)."""
    fd, tmp = _create_temp(path)
    try:
        yield fd
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, StorageError):
            raise _os_error(exc, path) from exc
        raise


def _write_error(exc: OSError, path: Path) -> StorageError:
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"cannot write under {path.parent}: {exc.strerror}")
    return _os_error(exc, path)


def _os_error(exc: OSError, path: Path) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"no space left on the device while writing {path}")
    if exc.errno == errno.EDQUOT:
        return StorageError(f"disk quota exceeded while writing {path}")
    return StorageError(f"cannot write {path}: {exc}")
