#!/bin/sh
# Entrypoint of the sluice image: choose kernel headers, read this node's
# interfaces, then become `sluice run` (exec: the controller is the only
# process and receives the runtime's SIGTERM itself).
#
# Arguments are passed on to `sluice run`. Interfaces come from --iface
# arguments or, with none given, from the per-node setting: the file
# $SLUICE_INTERFACES_DIR/$NODE_NAME, else $SLUICE_INTERFACES_DIR/default
# (names separated by spaces or newlines; the DaemonSet mounts a ConfigMap
# there and sets NODE_NAME from the downward API).
set -eu

release=$(uname -r)
modules=/lib/modules/$release
if [ -e "$modules/build/include/linux/kconfig.h" ] || [ -e "$modules/source/include/linux/kconfig.h" ]; then
    echo "sluice-entrypoint: kernel headers of the node ($modules)" >&2
else
    # Like setup.sh on a kernel Debian has no headers package for: the
    # distribution's generic headers serve XDP and tc programs well.
    export BCC_KERNEL_SOURCE=/opt/sluice/kernel-headers
    echo "sluice-entrypoint: no headers for $release on the node; using the image's ($BCC_KERNEL_SOURCE)" >&2
fi

case " $* " in
*" --iface "* | *" --iface="*) ;;
*)
    dir=${SLUICE_INTERFACES_DIR:-/etc/sluice/interfaces}
    setting=$dir/${NODE_NAME:-default}
    [ -f "$setting" ] || setting=$dir/default
    if [ ! -f "$setting" ]; then
        echo "sluice-entrypoint: no --iface and no interface setting in $dir" \
            "(for ${NODE_NAME:-this node} or default)" >&2
        exit 2
    fi
    ifaces=$(cat "$setting")
    if [ -z "$(echo $ifaces)" ]; then
        # `sluice run` without --iface would build the namespace lab instead.
        echo "sluice-entrypoint: $setting names no interface" >&2
        exit 2
    fi
    for iface in $ifaces; do
        set -- "$@" --iface "$iface"
    done
    ;;
esac

exec sluice run "$@"
