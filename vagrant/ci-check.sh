#!/bin/sh
# CI check of the Vagrant side, offline:
#   vagrant/ci-check.sh [--up] [--kernel K] [BOX]
# 1. `vagrant validate` of vagrant/Vagrantfile with the libvirt provider;
# 2. with BOX (a file from `pybpfmap vm box --kernel K`, default K bookworm):
#    `vagrant box add` it offline into a throw-away VAGRANT_HOME, check it is listed;
# 3. with --up: vagrant/ci-up.sh boots it under libvirt, runs `sudo pytest -m
#    kprobes` in the guest and destroys it (a VM boot: on a machine shared with
#    other VM jobs, run the whole check under their lock, e.g. flock(1)).
# A missing vagrant, vagrant-libvirt or box file is one line and exit status 1.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
up=
kernel=bookworm
while [ $# -gt 0 ]; do
    case "$1" in
    --up) up=1; shift ;;
    --kernel) kernel=${2:?--kernel needs a value}; shift 2 ;;
    -*) echo "usage: $0 [--up] [--kernel K] [BOX]" >&2; exit 2 ;;
    *) break ;;
    esac
done
die() { echo "vagrant-check: $*" >&2; exit 1; }

command -v vagrant >/dev/null 2>&1 \
    || die "vagrant not installed (vagrant/provision.sh --host installs it)"
dpkg-query -W -f='${Status}\n' vagrant-libvirt 2>/dev/null | grep -q 'ok installed' \
    || vagrant plugin list 2>/dev/null | grep -q '^vagrant-libvirt' \
    || die "no vagrant-libvirt plugin (apt-get install vagrant-libvirt)"
if [ $# -ge 1 ]; then
    [ -f "$1" ] || die "no box file $1 (make it: pybpfmap vm box --kernel $kernel --output $1)"
    box=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
elif [ -n "$up" ]; then
    die "--up needs a BOX file (pybpfmap vm box --kernel $kernel --output BOX)"
fi

home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
export VAGRANT_HOME="$home" VAGRANT_CHECKPOINT_DISABLE=1 PYBPFMAP_BOX="$kernel"
export VAGRANT_DOTFILE_PATH="$home/dot-vagrant"

cd "$here"
VAGRANT_DEFAULT_PROVIDER=libvirt vagrant validate

if [ -n "${box:-}" ]; then
    vagrant box add --name "pybpfmap-$kernel" "$box" >"$home/box-add.log" 2>&1 \
        || { tr '\r' '\n' <"$home/box-add.log" | grep -v 'Progress: ' >&2; die "box add failed"; }
    vagrant box list | grep -q "^pybpfmap-$kernel .*libvirt" \
        || die "box not listed after add"
    # Validate again with the box in use: this also loads the box's own Vagrantfile.
    VAGRANT_DEFAULT_PROVIDER=libvirt vagrant validate
    echo "vagrant-check: box $box added offline as pybpfmap-$kernel (provider libvirt)"
fi
if [ -n "$up" ]; then
    "$here/ci-up.sh" --kernel "$kernel" "$box"
fi
echo "vagrant-check: OK"
