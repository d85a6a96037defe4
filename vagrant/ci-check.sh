#!/bin/sh
# CI check of the Vagrant side, offline:
#   vagrant/ci-check.sh [BOX]
# 1. `vagrant validate` of vagrant/Vagrantfile (libvirt provider when the
#    vagrant-libvirt plugin is installed, else provider config ignored);
# 2. with BOX (a file from `pybpfmap vm box`): `vagrant box add` it offline
#    into a throwaway VAGRANT_HOME and check that it is listed.
# Skips (exit 0, saying so) when vagrant is not installed.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
if ! command -v vagrant >/dev/null 2>&1; then
    echo "vagrant-check: SKIP: vagrant not installed (apt-get install vagrant vagrant-libvirt)"
    exit 0
fi
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
export VAGRANT_HOME="$home" VAGRANT_CHECKPOINT_DISABLE=1

cd "$here"
if vagrant plugin list 2>/dev/null | grep -q vagrant-libvirt \
        || dpkg-query -W vagrant-libvirt >/dev/null 2>&1; then
    VAGRANT_DEFAULT_PROVIDER=libvirt vagrant validate
else
    vagrant validate --ignore-provider
fi

if [ $# -ge 1 ]; then
    box=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
    vagrant box add --name pybpfmap-ci "$box"
    vagrant box list | grep -q '^pybpfmap-ci .*libvirt' || {
        echo "vagrant-check: box not listed after add" >&2
        exit 1
    }
    # Validate again with the box in use: this also loads the box's own Vagrantfile.
    if dpkg-query -W vagrant-libvirt >/dev/null 2>&1; then
        PYBPFMAP_BOX=pybpfmap-ci VAGRANT_DEFAULT_PROVIDER=libvirt vagrant validate
    fi
    echo "vagrant-check: box $box added offline (provider libvirt)"
fi
echo "vagrant-check: OK"
