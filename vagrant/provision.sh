#!/bin/sh
# The one provisioning script of pybpfmap.
#
#   provision.sh --guest   inside a test VM (Vagrant box or the image that
#                          `pybpfmap vm build` makes in a chroot): a Debian
#                          kernel, its matching headers, BCC and the test tools.
#   provision.sh --host    on the machine you develop on: the same tools, qemu
#                          and debootstrap for the built-in VM, a venv in
#                          ./.venv with pybpfmap installed in it, and Debian's
#                          nearest kernel headers when the running kernel has
#                          none (BCC needs headers to compile).
#
# Idempotent and quiet when everything is present.  Run as root.
set -eu

mode=${1:---host}
export DEBIAN_FRONTEND=noninteractive

# Debian names.  Note: the PyPI package called "bcc" is unrelated to BCC;
# BCC's Python bindings are Debian's python3-bpfcc.
TOOLS="python3-bpfcc bpfcc-tools python3-pyroute2 python3-pytest bpftool
       python3-matplotlib python3-venv python3-pip python3-setuptools procps iproute2
       kmod util-linux"
HOST_ONLY="qemu-system-x86 qemu-utils debootstrap e2fsprogs vagrant vagrant-libvirt libvirt-daemon-system dnsmasq-base"
# openssh-server, sudo and rsync make the built image usable as a Vagrant box
# (pybpfmap vm box); Debian's own Vagrant boxes have them already.
GUEST_ONLY="linux-image-amd64 linux-headers-amd64 systemd-sysv udev
            ca-certificates fio openssh-server sudo rsync"

missing() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed' \
            || printf '%s ' "$p"
    done
}

apt_install() {
    todo=$(missing "$@")
    [ -z "$todo" ] && return 0
    echo "provision: installing $todo"
    log=$(mktemp)
    # shellcheck disable=SC2086
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends $todo; } \
            >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        echo "provision: apt-get install failed (full log: $log)" >&2
        exit 1
    fi
    rm -f "$log"
}

if [ "$(id -u)" != 0 ]; then
    echo "provision.sh: must run as root (try: sudo $0 $mode)" >&2
    exit 1
fi

case "$mode" in
--guest)
    # shellcheck disable=SC2086
    apt_install $TOOLS $GUEST_ONLY
    ;;
--host)
    # shellcheck disable=SC2086
    apt_install $TOOLS $HOST_ONLY
    # BCC compiles against /lib/modules/$(uname -r)/build.  When the running
    # kernel ships no headers (cloud and CI kernels often don't), install
    # Debian's own headers package; pybpfmap links it in and says so
    # (`pybpfmap info` shows which headers are in use).
    if [ ! -e "/lib/modules/$(uname -r)/build" ]; then
        apt_install linux-headers-amd64
    fi
    top=$(cd "$(dirname "$0")/.." && pwd)
    if [ ! -x "$top/.venv/bin/python" ]; then
        echo "provision: creating $top/.venv (system site packages, for bcc)"
        /usr/bin/python3 -m venv --system-site-packages "$top/.venv"
    fi
    if [ ! -x "$top/.venv/bin/pybpfmap" ]; then
        echo "provision: installing pybpfmap into $top/.venv"
        "$top/.venv/bin/pip" install -q --no-build-isolation -e "$top" >/dev/null
    fi
    ;;
*)
    echo "usage: $0 --host | --guest" >&2
    exit 2
    ;;
esac
