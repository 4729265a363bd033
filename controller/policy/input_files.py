# SPDX-License-Identifier: GPL-2.0-only
"""Input files (policies, domains_file, prefixes_file): read whole, bounded, as text."""

import os
import stat

# Input files (policies, domains_file, prefixes_file) are read whole: a bound
# keeps `validate /dev/zero` or a runaway feed from eating the machine's memory.
# SLUICE_MAX_INPUT_BYTES (or `sluice --max-input-size`) raises it.
MAX_INPUT_BYTES = int(os.environ.get("SLUICE_MAX_INPUT_BYTES", 64 * 1024 * 1024))


class InputFileError(Exception):
    """An input file that cannot be read as text; line and column say where (None: the whole file)."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.line, self.column = line, column


def read_text_file(path: str | os.PathLike, limit: int | None = None) -> str:
    """A regular file of at most `limit` bytes of UTF-8 text without NUL bytes;
    raises InputFileError saying what is wrong (and where) otherwise."""
    limit = MAX_INPUT_BYTES if limit is None else limit
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before we refuse it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise InputFileError(error.strerror) from None
    # Checked before fdopen, which refuses a directory with an error of its own.
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        os.close(fd)
        raise InputFileError("a directory" if stat.S_ISDIR(status.st_mode) else "not a regular file")
    with os.fdopen(fd, "rb") as file:
        if status.st_size > limit:
            raise InputFileError(f"{status.st_size} bytes; input files may have at most {limit} "
                                 f"(raise with SLUICE_MAX_INPUT_BYTES or --max-input-size)")
        try:
            data = file.read(limit + 1)
        except OSError as error:
            raise InputFileError(error.strerror) from None
    if len(data) > limit:
        raise InputFileError(f"more than {limit} bytes; input files may have at most {limit} "
                             f"(raise with SLUICE_MAX_INPUT_BYTES or --max-input-size)")

    def where(offset: int) -> tuple[int, int]:
        return data.count(b"\n", 0, offset) + 1, offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        if nul < 0 or nul > error.start:
            raise InputFileError(f"not UTF-8 text (byte 0x{data[error.start]:02x})",
                                 *where(error.start)) from None
    if nul >= 0:
        raise InputFileError("contains a NUL byte: not a text file", *where(nul))
    return text
