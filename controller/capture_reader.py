# SPDX-License-Identifier: GPL-2.0-only
"""A capture read one chunk ahead, in a process of its own, for `sluice replay`.

Reading a capture (walking its records, filling in checksums) is pure CPU
work that does not depend on what the program does: about as much as
running the frames. A reader process does it while replay's own process
runs the frames of the chunk before: each chunk's bytes are copied into a
slot of a memfd that both map (capture.SHARED_SLOTS), the reader fills in
their checksums there, and sends the chunk's frame offsets and lengths
down a pipe. Replay says when it is done with a chunk (DONE); the reader
stays at most two chunks ahead, so the slot it fills is never one replay
still runs (_serve)."""

import mmap
import multiprocessing
import multiprocessing.reduction
import os
import signal
import struct

import numpy

from .capture import SHARED_SLOTS, Capture, CaptureError, Chunk

# A capture smaller than this is read in replay's own process: a round trip
# to the reader and mapping its memfd cost more than reading it there.
READ_AHEAD_MIN_BYTES = 1 << 20
# The reader's messages, after its first answer, each begin with a kind.
CHUNK, ERROR, END = b"c", b"e", b"."
DONE = b"d"                 # the caller's, after each chunk: done with its frames
# A chunk's message after its kind: frames, where its last record ends in
# the file, bytes of a buffer of its own (frames rewritten as Ethernet,
# capture.Capture._rewritten) or -1: its frames lie in the memfd. Then its
# offsets and lengths (int64) and that buffer.
_CHUNK_HEAD = struct.Struct("=qqq")


def read_here(capture_path: str, fix_checksums: bool):
    """The capture's Chunks, read in this process."""
    with Capture(capture_path, fix_checksums) as capture:
        yield from capture.chunks()


class ReadAhead:
    """The reader process: started once (fork: best before the caller
    loads anything large), then asked for one capture after another."""

    def __init__(self, min_bytes: int = READ_AHEAD_MIN_BYTES):
        self.min_bytes = min_bytes
        self.process = None
        self._start()

    def takes(self, capture_path: str) -> bool:
        """Whether the capture is worth handing to the reader (min_bytes or more)."""
        return os.path.getsize(capture_path) >= self.min_bytes

    def _start(self) -> None:
        self.connection, theirs = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("fork").Process(
            target=_serve, args=(theirs, self.connection), name="sluice capture reader", daemon=True)
        self.process.start()
        theirs.close()

    def chunks(self, capture_path: str, fix_checksums: bool):
        """read_here()'s Chunks, read by the reader process. A capture the
        reader cannot read raises its CaptureError here; so does a reader
        that died, and the next capture gets a new one. The caller is done
        with a chunk's frames when it asks for the next."""
        if self.process is None:
            self._start()
        in_step = False         # the pipe holds nothing more of this capture
        try:
            self.connection.send((capture_path, fix_checksums))
            answer = self.connection.recv()
            if isinstance(answer, str):
                in_step = True
                raise CaptureError(answer)
            shared = None
            if answer:
                memfd = multiprocessing.reduction.recv_handle(self.connection)
                try:
                    shared = mmap.mmap(memfd, answer, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                finally:
                    os.close(memfd)
            try:
                while True:
                    message = self.connection.recv_bytes()
                    kind = message[:1]
                    if kind != CHUNK:
                        in_step = True
                        if kind == ERROR:
                            raise CaptureError(message[1:].decode())
                        break
                    yield _chunk(message, shared)
                    self.connection.send_bytes(DONE)
            finally:
                if shared is not None:
                    shared.close()
        except (EOFError, OSError) as error:
            raise CaptureError(f"{capture_path}: the capture reader process failed: {error}") from None
        finally:
            if not in_step:
                self.close()    # its pipe holds the rest of a capture, or it is gone

    def close(self) -> None:
        if self.process is None:
            return
        self.connection.close()         # the reader's end of the pipe sees EOF and exits
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.process = None


def _chunk(message: bytes, shared) -> Chunk:
    """A chunk's message as a Chunk."""
    count, file_end, own = _CHUNK_HEAD.unpack_from(message, 1)
    at = 1 + _CHUNK_HEAD.size
    offsets, lengths = (numpy.frombuffer(message, dtype=numpy.int64, count=count, offset=at + column * 8 * count)
                        for column in (0, 1))
    end = at + 2 * 8 * count
    buffer = shared if own < 0 else bytearray(message[end:end + own])
    return Chunk(buffer, offsets, lengths, file_end)


def _serve(connection, parents_end) -> None:
    """The reader process: a capture path and fix_checksums at a time, until
    the pipe closes. Its answer: the size of the memfd it sends (0: none,
    every chunk brings its own buffer) or an error's text; then each
    chunk's message, then END (or ERROR and a text).

    Each chunk is sent once the caller is done with the one before but one
    (DONE): the chunk being read then goes into a slot of the memfd
    (capture.SHARED_SLOTS) that no chunk the caller may still run holds."""
    parents_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # a ^C is replay's to handle: it closes the pipe
    while True:
        try:
            capture_path, fix_checksums = connection.recv()
        except EOFError:
            return
        try:
            capture = Capture(capture_path, fix_checksums, shared=True)
        except CaptureError as error:
            connection.send(str(error))
            continue
        try:
            shared = capture.frames if capture.memfd is not None else None
            connection.send(len(shared) if shared is not None else 0)
            if shared is not None:
                multiprocessing.reduction.send_handle(connection, capture.memfd, os.getppid())
            waiting = 0             # chunks sent that the caller has not said it is done with
            try:
                for chunk in capture.chunks():
                    message = _chunk_message(chunk, shared)
                    if waiting == SHARED_SLOTS - 1:     # the next chunk read goes into the oldest one's slot
                        _done(connection)
                        waiting -= 1
                    connection.send_bytes(message)
                    waiting += 1
                last = END
            except CaptureError as error:
                last = ERROR + str(error).encode()
            for _ in range(waiting):
                _done(connection)
            connection.send_bytes(last)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            return
        finally:
            capture.close()


def _done(connection) -> None:
    """Wait until the caller is done with a chunk's frames."""
    if connection.recv_bytes() != DONE:
        raise EOFError("the caller is out of step")


def _chunk_message(chunk, shared) -> bytes:
    own = None if chunk.buffer is shared else bytes(chunk.buffer)
    count = len(chunk.offsets)
    return b"".join((CHUNK, _CHUNK_HEAD.pack(count, chunk.file_end, -1 if own is None else len(own)),
                     chunk.offsets.tobytes(), chunk.lengths.tobytes(), own or b""))
