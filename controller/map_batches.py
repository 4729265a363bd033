# SPDX-License-Identifier: GPL-2.0-only
"""A hash map's entries walked in batches (BPF_MAP_LOOKUP_BATCH): how the
controller reads, counts and empties its large tables (flows, frags,
streams, the IPv6 flow index) without a system call per entry."""

import ctypes
import errno
import os
import time

import bcc

# Entries copied out per BPF_MAP_LOOKUP_BATCH call: large enough that a full
# flow table takes a few dozen calls, small enough that the buffers stay near
# a megabyte. A hash bucket never holds more (the kernel's ENOSPC case).
LOOKUP_BATCH = 8192


# A batch that finds its bucket's lock taken gives up rather than spin: since
# 6.15 the kernel's hash-map buckets take a resilient lock that returns
# ETIMEDOUT or EDEADLK (EBUSY before), which a loaded VM whose lock holder's
# vCPU is descheduled meets (a scrape failed so, 2026-12-01). The walk stays
# where it was; try that batch again.
BUSY_BUCKET = {errno.EBUSY, errno.EDEADLK, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR}
BUSY_RETRIES = 5


def entry_batches(table):
    """The entries of a hash map, a batch at a time: (keys, values, count)
    per BPF_MAP_LOOKUP_BATCH call (the arrays are reused: read them before
    the next), in the order keys() walks them.

    Walking the keys one by one is a syscall per entry from Python: 5 s for a
    full flow table on a loaded machine, during which the controller reads no
    ring. bcc's items_lookup_batch() cannot be used instead: in bcc 0.26 it
    passes one variable as both the batch token and the count, so the walk
    resumes at the wrong bucket (and it allocates room for the map's every
    entry). Entries come and go during a walk of a live table: it is a
    moment's view.
    """
    keys = (table.Key * LOOKUP_BATCH)()
    values = (table.Leaf * LOOKUP_BATCH)()
    token, next_token, count = ctypes.c_uint32(0), ctypes.c_uint32(0), ctypes.c_uint32(0)
    first, retries = True, 0
    while True:
        count.value = LOOKUP_BATCH
        result = bcc.lib.bpf_lookup_batch(table.map_fd, None if first else ctypes.byref(token),
                                          ctypes.byref(next_token), keys, values, ctypes.byref(count))
        error = ctypes.get_errno()
        if result != 0 and error in BUSY_BUCKET and retries < BUSY_RETRIES:
            retries += 1
            time.sleep(0.01)
            continue
        if result != 0 and error != errno.ENOENT:       # ENOENT: the walk reached the end
            raise OSError(error, f"BPF_MAP_LOOKUP_BATCH on map fd {table.map_fd}: {os.strerror(error)}")
        retries = 0
        yield keys, values, count.value
        if result != 0:
            return
        token.value, first = next_token.value, False


def delete_entries(table) -> None:
    """Empty a hash map. Not bcc's clear(): each key it deletes sends the
    next look-up back to the table's first bucket, a walk of the whole table."""
    keys = [table.Key.from_buffer_copy(key) for batch, _, count in entry_batches(table) for key in batch[:count]]
    for key in keys:
        del table[key]


def count_entries(table) -> int:
    """The entries in a hash map, counted a batch at a time."""
    return sum(count for _keys, _values, count in entry_batches(table))
