"""Open only regular files: a FIFO, socket or device named like a scan must never be read.

Why: ``open()`` on a FIFO blocks until a writer appears (SIGTERM cannot stop a run stuck there),
and a symlink to ``/dev/zero`` reads until memory is gone. The file is opened non-blocking and
checked with ``fstat`` on the descriptor itself, so a file swapped for a FIFO after a ``stat`` is
still refused; only then is blocking mode restored for ordinary reads.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFileError(OSError):
    """The path is (or links to) something other than a regular file; ``strerror`` says what."""


def kind_of(mode: int) -> str:
    """'a FIFO (named pipe)', 'a socket', ... for a non-regular ``st_mode``."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def not_regular_reason(path: Path) -> str | None:
    """Why ``path`` (links followed) is not a regular file, or None when it is one.

    Cheap (one ``stat``, nothing opened); a missing or unreadable path returns None so that the
    caller's own open reports the real error.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISREG(st.st_mode):
        return None
    return f"is {kind_of(st.st_mode)}, not a regular file; it is never opened"


def open_regular(path: Path) -> BinaryIO:
    """``open(path, "rb")`` for regular files only; anything else raises :class:`NotRegularFileError`."""
    reason = not_regular_reason(path)
    if reason is not None:
        raise NotRegularFileError(errno.EINVAL, reason, os.fspath(path))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(
                errno.EINVAL, f"is {kind_of(st.st_mode)}, not a regular file", os.fspath(path)
            )
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
