#!/usr/bin/env bash
# The fresh-machine check: run the README's test command as a new user would on
# a freshly booted machine, as far as one can reproduce that on a used one.
#
#   tests/fresh_machine.sh            (as root; `make fresh-check` runs it)
#
# - a clean clone of the committed HEAD into a temporary directory (nothing
#   untracked, no .venv, no vm/.venv, no results of earlier runs);
# - a private mount namespace in which /sys/fs/bpf is not mounted and
#   /lib/modules/$(uname -r) is hidden behind an empty directory, as on a fresh
#   boot of this kind of machine: setup.sh and the suite must create both;
# - the kernel-matrix leg chooses its accelerator by its boot probe (--accel
#   auto), never a forced one;
# - the test modules in reverse order (SLUICE_TEST_ORDER=reverse,
#   tests/conftest.py), so a module that leans on state an earlier one left
#   (a mount, a pin, a namespace) fails here.
# What it cannot undo: Debian packages and kernels that earlier runs installed,
# and the apt lists; setup.sh's own checks are what guard those.
# Exits with the test command's status; the clone is removed unless KEEP=1.
set -euo pipefail
if [ "$(id -u)" -ne 0 ]; then
    echo "fresh_machine.sh: run as root (the README's test command needs root)" >&2
    exit 1
fi
repo=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
work=$(mktemp -d /tmp/sluice-fresh-XXXXXX)
chmod 0755 "$work"   # as a clone in a home or /srv would be: tests run sluice as nobody too
trap '[ "${KEEP:-0}" = 1 ] || rm -rf "$work"' EXIT
git clone -q "$repo" "$work/sluice"
echo "fresh_machine.sh: clean clone of $(git -C "$work/sluice" rev-parse --short HEAD) in $work/sluice"

# Everything below runs in its own mount namespace: the host keeps its mounts.
unshare --mount --propagation private env WORK="$work/sluice" bash -euo pipefail -c '
    release=$(uname -r)
    while mountpoint -q /sys/fs/bpf; do umount /sys/fs/bpf; done
    if [ -e "/lib/modules/$release" ]; then
        mount -t tmpfs -o mode=0755 fresh-lib-modules "/lib/modules/$release"
    fi
    echo "fresh_machine.sh: /sys/fs/bpf $(mountpoint -q /sys/fs/bpf && echo mounted || echo not mounted);" \
         "/lib/modules/$release: $(ls -A "/lib/modules/$release" 2>/dev/null | wc -l) entries"
    cd "$WORK"
    export SLUICE_TEST_ORDER=reverse
    set -x
    ./setup.sh && .venv/bin/python -m pytest
'
