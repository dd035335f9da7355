"""Files that appear whole or not at all: atomic writes, staged folders, file hashes.

Why atomic: an overnight run can be killed at any moment (Ctrl-C, OOM killer, kill -9, power).
Every file is written to a hidden temp file in its target folder, flushed and fsynced, then
renamed over the target and the folder fsynced, so a reader only ever sees the old file or the
complete new one. Live temp paths are registered so an interrupt handler can remove them, and a run
removes stale temps a killed run left behind (it holds the output lock, so none can be live).
A folder (a model bundle, a checkpoint, a report) is built the same way: in a hidden sibling,
then swapped into place (:func:`staged_dir`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from mtcolor_batch.core.regular import open_regular

TEMP_MARK = ".mtcolor-tmp"
_LIVE_TEMPS: set[Path] = set()


def live_temps() -> list[Path]:
    return sorted(_LIVE_TEMPS)


def remove_live_temps() -> None:
    """Called on a hard interrupt: nothing half-written stays on disk."""
    for tmp in list(_LIVE_TEMPS):
        tmp.unlink(missing_ok=True)
        _LIVE_TEMPS.discard(tmp)


_HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
_TEMP_NAME = re.compile(r"^\.mt(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}" + re.escape(TEMP_MARK) + "$")
_OLD_TEMP_NAME = re.compile(r"^\..*\.(?P<pid>\d+)" + re.escape(TEMP_MARK) + "$")  # earlier versions' temps


def temp_path(folder: Path) -> Path:
    """A fresh temp name in ``folder``: short and fixed-length whatever the target's name.

    ``.mt<host>-<pid>-<random>.mtcolor-tmp`` (about 40 bytes): a 250-byte target name can never
    push its temp past the 255-byte name limit, and the host and pid in the name let a later run
    tell a dead writer's leftover from a live writer's file (another shard, another process).
    """
    return Path(folder) / f".mt{_HOST_TAG}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_MARK}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def temp_owner_dead(name: str) -> bool:
    """True only for a temp written on this host by a process that no longer runs.

    A temp from another host (a shared folder) or from a live process is never judged dead;
    an unparseable name is left alone too.
    """
    m = _TEMP_NAME.match(name)
    if m is not None:
        if m["host"] != _HOST_TAG:
            return False
        pid = int(m["pid"])
    else:
        old = _OLD_TEMP_NAME.match(name)
        if old is None:
            return False
        pid = int(old["pid"])
    return pid != os.getpid() and not _pid_alive(pid)


def clean_stale_temps(out_dir: Path) -> list[Path]:
    """Remove temp files whose writer is dead (a killed run); live writers' temps are left alone.

    Why not "every temp": shards of one job array share the output folder, and one shard
    starting must not delete the temp another shard is writing at that moment.
    """
    removed = []
    for tmp in Path(out_dir).rglob(f".*{TEMP_MARK}"):
        if tmp.is_file() and temp_owner_dead(tmp.name):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HashingFile:
    """A write-only view of an open temp file that hashes the bytes while they are written.

    Why: reading a just-written output back to hash it costs a second pass over every byte. Bytes
    written in order (Pillow, the PNG writer, JSON) are hashed on the way through; a write that
    jumps ahead leaves a stretch to read back at the end, and a write landing on already hashed
    bytes (a format patching its header) makes :meth:`finish` re-read the whole file. ``fileno``
    is hidden so encoders write through :meth:`write` instead of the descriptor (which would
    bypass the digest); :attr:`raw` is the real file for writers that need it (see ``_write_tiff``),
    after :meth:`rehash_all` is called.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self.raw = fh
        self._digest = hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) are in the digest and final
        self._rehash = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        pos = self.raw.tell()
        n = self.raw.write(data)
        if pos == self._hashed and not self._rehash:
            self._digest.update(data)
            self._hashed += n
        elif pos < self._hashed:
            self._rehash = True
        return n

    def rehash_all(self) -> None:
        """Someone writes to :attr:`raw` directly: hash the whole file from disk at the end."""
        self._rehash = True

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def flush(self) -> None:
        self.raw.flush()

    def truncate(self, size: int | None = None) -> int:
        self._rehash = True
        return self.raw.truncate(size)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno hidden: writes must go through write() to be hashed")

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def finish(self) -> str:
        """Hex sha256 of the file's bytes (call after the last write; reads back only what it must)."""
        self.raw.flush()
        digest, start = (hashlib.sha256(), 0) if self._rehash else (self._digest, self._hashed)
        self.raw.seek(start)
        for chunk in iter(lambda: self.raw.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()


class OutputBatch:
    """Files staged as temps and renamed into place together when the block ends without error.

    Why a batch: an image and its ``.color.json`` record belong together. Both are fully written
    and fsynced first; only then are both renamed, so an interrupt leaves either the old pair or
    the new pair (the rename window is microseconds), never an image whose record is missing.
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def add(self, target: Path, write: Callable[[BinaryIO], None]) -> str:
        """Write a temp beside ``target`` through ``write(fh)``; return the sha256 of its bytes.

        The bytes are hashed as they stream through (no second pass over a large file); only what
        a writer put down out of order (tifffile's IFD after the pixels) is read back, after the
        fsync, so the digest is always that of the bytes on disk.
        """
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(target.parent)
        _LIVE_TEMPS.add(tmp)
        self._staged.append((tmp, target))
        with open(tmp, "w+b") as fh:
            stream = HashingFile(fh)
            write(stream)  # type: ignore[arg-type]  # a BinaryIO in all an encoder uses
            fh.flush()
            os.fsync(fh.fileno())
            return stream.finish()

    def commit(self) -> None:
        for tmp, target in self._staged:
            os.replace(tmp, target)
            _LIVE_TEMPS.discard(tmp)
        for folder in {target.parent for _, target in self._staged}:
            _fsync_dir(folder)
        self._staged.clear()

    def discard(self) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
            _LIVE_TEMPS.discard(tmp)
        self._staged.clear()

    def __enter__(self) -> OutputBatch:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def atomic_write(target: Path, write: Callable[[BinaryIO], None]) -> str:
    """Write one file atomically through ``write(fh)``; return the sha256 of the bytes written."""
    with OutputBatch() as batch:
        return batch.add(target, write)


def atomic_write_bytes(target: Path, data: bytes) -> str:
    """:func:`atomic_write` of bytes already in memory; return their sha256."""
    def put(fh: BinaryIO) -> None:
        fh.write(data)

    return atomic_write(target, put)


def atomic_write_text(target: Path, text: str) -> str:
    """:func:`atomic_write` of UTF-8 text (manifests, reports, CSV, JSON); return its sha256."""
    return atomic_write_bytes(target, text.encode("utf-8"))


_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, streamed (scans and weights can be gigabytes).

    Regular files only: a FIFO or device raises :class:`NotRegularFileError` (an OSError) unopened.
    """
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_file(target: Path) -> Iterator[Path]:
    """A temp path beside ``target`` for writers that want a file name (safetensors, JSON dumps).

    Fsynced and renamed over ``target`` when the block ends without error; removed otherwise.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target.parent)
    _LIVE_TEMPS.add(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)
        _LIVE_TEMPS.discard(tmp)


@contextlib.contextmanager
def staged_dir(dest: Path, label: str = "building") -> Iterator[Path]:
    """An empty hidden sibling folder of ``dest`` to build in; swapped into place on success.

    Why: a half-built bundle, checkpoint or report must never look like a finished one. On success
    an existing ``dest`` is moved aside, the new folder renamed into place and the old one removed;
    on any error (or interrupt) the staging folder is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.{label}-"))
    try:
        yield staging
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(dest, old)
            os.replace(staging, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_new_file(target: Path, text: str) -> bool:
    """Create ``target`` atomically, never replacing an existing file; False if it exists.

    Written to a temp file, fsynced, then hard-linked into place: ``link`` fails if the name
    exists, so a sidecar a user created meanwhile is never overwritten, and a crash never leaves
    a half-written sidecar under the real name.
    """
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError:  # filesystems without hard links: exclusive create is still no-overwrite
            try:
                with open(target, "x", encoding="utf-8") as fh:
                    fh.write(text)
                    fh.flush()
                    os.fsync(fh.fileno())
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return True
