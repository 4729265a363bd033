#!/usr/bin/env bash
# Build the sluice image without a registry: bootstrap a Debian bookworm base
# with debootstrap, import it into podman, then build deploy/container/Containerfile
# on it. `podman build --isolation chroot` needs no container runtime, so this
# works where `podman run` cannot start a container. The image holds the
# committed HEAD: commit before building.
#
#   deploy/container/build.sh [TAG]      (default TAG: localhost/sluice:latest)
#
# The base is cached by a content key (suite, variant, mirror, this script's
# base recipe): a second build reuses it and podman's layer cache, and only
# the layers whose inputs changed are built again.
set -euo pipefail
cd "$(dirname "$0")/../.."

tag=${1:-localhost/sluice:latest}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base_recipe="debootstrap --variant=minbase $suite $mirror"
base_key=$(printf '%s' "$base_recipe" | sha256sum | cut -c1-12)
base=localhost/sluice-base:$suite-$base_key

if ! podman image exists "$base"; then
    rootfs=$(mktemp -d /var/tmp/sluice-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    echo "build.sh: bootstrapping $suite into $rootfs" >&2
    debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >&2
    # A registry image carries no apt cache or logs; neither does this base.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
    tar -C "$rootfs" --numeric-owner -c . | podman import --message "$base_recipe" - "$base" >&2
    rm -rf "$rootfs"
    trap - EXIT
fi

# The image is built from the commit checked out (HEAD), never from
# uncommitted edits, and says which: the context holds only the files the
# Containerfile copies, as committed.
revision=$(git rev-parse HEAD)
context=$(mktemp -d /var/tmp/sluice-context.XXXXXX)
trap 'rm -rf "$context"' EXIT
git archive "$revision" pyproject.toml README.md controller bpf policies deploy/container | tar -x -C "$context"
podman build --isolation chroot --layers --build-arg "BASE=$base" \
    --label "org.opencontainers.image.revision=$revision" \
    -f deploy/container/Containerfile -t "$tag" "$context" >&2
echo "$tag"
