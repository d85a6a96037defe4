#!/bin/sh
# Boot a pybpfmap box with vagrant-libvirt, run the guest tests in it, destroy it:
#   vagrant/ci-up.sh [--kernel K] BOX
# BOX is a file from `pybpfmap vm box --kernel K` (default K: bookworm).  As root
# (CI), on a host without systemd: a private libvirtd and virtlogd run in a
# network namespace of their own (its NAT bridge and the guest exist only
# there); the box is added to a throw-away VAGRANT_HOME; then
# `pybpfmap vm box-check` (pybpfmap.vm.vagrant_check) boots it (`vagrant up`),
# runs `sudo pytest -m "guest or kprobes"` in the guest (at least one test must
# run, none skipped for lack of kprobes or root), and `vagrant destroy -f`.
# Its libvirt objects are named pybpfmap-vagrant-PID (domain, pool, network).
# Whatever happens (failure, Ctrl-C, TERM) the trap removes all of it: domain,
# volumes, pool, networks, daemons, namespace, every process in it.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
kernel=bookworm
if [ "${1:-}" = --kernel ]; then
    kernel=${2:?--kernel needs a value}
    shift 2
fi
t0=$(date +%s)
say() { echo "ci-up [$(($(date +%s) - t0))s] $*"; }
die() { echo "ci-up: $*" >&2; exit 1; }

# --- bad input and missing tools: one line each, before anything is created
[ $# = 1 ] || die "usage: $0 [--kernel K] BOX (a file from pybpfmap vm box)"
[ -f "$1" ] || die "no box file $1 (make it: pybpfmap vm box --kernel $kernel --output $1)"
box=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
[ "$(id -u)" = 0 ] || die "must run as root (it starts libvirtd and creates a network namespace)"
for tool in vagrant libvirtd virtlogd virsh dnsmasq ip; do
    command -v "$tool" >/dev/null 2>&1 && continue
    die "$tool not found; install libvirt and vagrant-libvirt: vagrant/provision.sh --host"
done
vagrant plugin list 2>/dev/null | grep -q '^vagrant-libvirt' \
    || die "vagrant has no vagrant-libvirt plugin (apt-get install vagrant-libvirt)"
if virsh -c qemu:///system uri >/dev/null 2>&1; then
    die "a libvirtd already serves qemu:///system here; this check starts its own: stop it first"
fi

id=pybpfmap-vagrant-$$
run_libvirt_was_there=$([ -e /run/libvirt ] && echo yes || true)
ns=$id
work=$(mktemp -d "/var/tmp/$id.XXXXXX")
chmod 711 "$work"   # qemu runs as libvirt-qemu: it must reach the pool and the box's kernel
virsh() { command virsh -q -c qemu:///system "$@"; }
in_ns() { ip netns exec "$ns" "$@"; }
export VAGRANT_HOME="$work/home" VAGRANT_DOTFILE_PATH="$work/dot-vagrant"
export VAGRANT_CWD="$here" VAGRANT_CHECKPOINT_DISABLE=1 PYBPFMAP_BOX="$kernel"
export LIBVIRT_DEFAULT_URI=qemu:///system PYBPFMAP_CONSOLE_LOG="$work/console.log"

names() {  # names dom|net|pool: the domains, networks or pools libvirtd knows
    case $1 in
    dom) virsh list --all --name ;;
    net) virsh net-list --all --name ;;
    pool) virsh pool-list --all --name ;;
    esac
}
new() { names "$1" | grep -vxF -f "$work/$1.before"; }  # not known at its start

stop_pid() {  # stop_pid PIDFILE: TERM, up to 20 s, then KILL
    [ -s "$1" ] || return 0
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || return 0
    n=0
    while kill -0 "$pid" 2>/dev/null && [ $n -lt 40 ]; do sleep 0.5; n=$((n + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    status=$?
    trap - EXIT INT TERM
    set +e
    say "teardown (exit status so far: $status)"
    if [ -s "$work/libvirtd.pid" ] && virsh uri >/dev/null 2>&1; then
        if [ -d "$VAGRANT_DOTFILE_PATH" ]; then
            in_ns vagrant destroy -f >"$work/destroy.log" 2>&1 || tail -n 5 "$work/destroy.log"
        fi
        # All that runs in our daemon was started by it (libvirt's "default"
        # network too, autostarted in our namespace); all it did not know when
        # it started is ours (the vagrant domain, its pool and network).
        for dom in $(virsh list --name); do virsh destroy "$dom" >/dev/null; done
        for dom in $(new dom); do
            virsh undefine "$dom" --nvram >/dev/null 2>&1 || virsh undefine "$dom" >/dev/null
        done
        for net in $(virsh net-list --name); do virsh net-destroy "$net" >/dev/null; done
        for net in $(new net); do virsh net-undefine "$net" >/dev/null; done
        for pool in $(virsh pool-list --name); do virsh pool-destroy "$pool" >/dev/null; done
        for pool in $(new pool); do virsh pool-undefine "$pool" >/dev/null; done
        left=$( { new dom; new net; new pool
                  virsh list --name; virsh net-list --name; virsh pool-list --name; } | grep -c .)
        say "teardown: libvirt domains, networks, pools left (defined by us or running): $left"
    fi
    if [ "$status" != 0 ] && [ -s "$work/libvirtd.log" ]; then
        say "teardown: last lines of libvirtd's log:"
        tail -n 15 "$work/libvirtd.log"
    fi
    stop_pid "$work/libvirtd.pid"
    stop_pid "$work/virtlogd.pid"
    # Anything else that ran in the namespace (qemu, dnsmasq, vagrant's ssh).
    if [ -e "/run/netns/$ns" ]; then
        pids=$(ip netns pids "$ns")
        [ -n "$pids" ] && { kill $pids; sleep 2; kill -KILL $pids 2>/dev/null; }
        ip netns del "$ns"
    fi
    # Files libvirt keeps under our names when it could not remove them itself.
    find /etc/libvirt /var/lib/libvirt /var/log/libvirt /run/libvirt -name "*$id*" \
        -exec rm -rf {} + 2>/dev/null
    # Our daemons' runtime state (e.g. the "autostarted" marker that would keep
    # a libvirtd started later from autostarting its networks).
    [ -n "$run_libvirt_was_there" ] || rm -rf /run/libvirt
    rm -rf "$work"
    # The Vagrantfile's single-threaded TCG qemu wrapper (written again on every up).
    rm -rf "${TMPDIR:-/tmp}/pybpfmap-qemu-$(id -u)"
    qemus=$(ps -eo args | grep -c "[q]emu-system.*$id")
    daemons=$(ps -eo args | grep -c "[l]ibvirtd -d -p $work\\|[v]irtlogd -d -p $work")
    say "teardown: done; left: namespace $([ -e "/run/netns/$ns" ] && echo "$ns" || echo none)," \
        "qemu processes $qemus, daemons $daemons"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step() {  # step NAME CMD...: run CMD, print how long it took; CMD's exit status
    name=$1
    shift
    s=$(date +%s)
    say "$name ..."
    st=0
    "$@" || st=$?   # (explicit: set -e does not act inside `if ! step ...`)
    if [ "$st" = 0 ]; then
        say "$name: $(($(date +%s) - s)) s"
    else
        say "$name: FAILED (exit status $st) after $(($(date +%s) - s)) s"
    fi
    return "$st"
}

start_libvirt() {
    ip netns add "$ns"
    in_ns ip link set lo up
    mkdir -p "$work/pool"
    in_ns virtlogd -d -p "$work/virtlogd.pid"
    # The Vagrantfile asks the same question.  When the answer is TCG, our libvirtd
    # does not see /dev/kvm (an unreadable empty file is bound over it, in the mount
    # namespace `ip netns exec` makes): where KVM cannot boot a stock kernel it is
    # of no use, and where libvirt-qemu may not open it while libvirt's own qemu
    # probe can (as here), libvirt re-probes qemu on every call: 30 s per define.
    # Its qemu.conf then says namespaces = [] (libvirt would fail to move that
    # mount into a domain's private /dev).
    accel=$("$here/../.venv/bin/pybpfmap" vm accel --kernel "$kernel" 2>/dev/null || echo tcg)
    hide_kvm=
    if [ "$accel" != kvm ] && [ -e /dev/kvm ]; then
        : >"$work/no-kvm"
        chmod 0 "$work/no-kvm"
        { grep -v '^namespaces' /etc/libvirt/qemu.conf; echo 'namespaces = []'; } >"$work/qemu.conf"
        hide_kvm="mount --bind $work/no-kvm /dev/kvm &&
                  mount --bind $work/qemu.conf /etc/libvirt/qemu.conf &&"
        say "accelerator $accel: libvirtd will not see /dev/kvm"
    fi
    in_ns sh -c "$hide_kvm exec env LIBVIRT_LOG_OUTPUTS=3:file:$work/libvirtd.log \
                 libvirtd -d -p $work/libvirtd.pid" \
        || { tail -n 20 "$work/libvirtd.log" >&2; die "libvirtd did not start"; }
    n=0
    until virsh uri >/dev/null 2>&1; do
        n=$((n + 1))
        [ $n -lt 60 ] || { tail -n 20 "$work/libvirtd.log" >&2; die "libvirtd does not answer"; }
        sleep 1
    done
    virsh capabilities | grep -q "<domain type='qemu'" \
        || die "libvirtd offers no qemu domain type (is qemu-system-x86 installed?)"
    for kind in dom net pool; do names "$kind" >"$work/$kind.before"; done
    virsh pool-define-as "$id" dir --target "$work/pool" >/dev/null
    virsh pool-start "$id" >/dev/null
}

add_box() {
    mkdir -p "$VAGRANT_HOME"
    # This run's own pool, network and names; the project Vagrantfile wins
    # over this one but sets none of these.
    cat >"$VAGRANT_HOME/Vagrantfile" <<EOF
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.default_prefix = "$id-"
    lv.storage_pool_name = "$id"
    lv.management_network_name = "$id"
  end
end
EOF
    vagrant box add --name "pybpfmap-$kernel" "$box" >"$work/box-add.log" 2>&1 \
        || { cat "$work/box-add.log" >&2; return 1; }
    chmod -R go+rX "$VAGRANT_HOME"
}

# The policy (vagrant up, the guest tests with their time limits, a watcher on
# the guest's sshd, judging junit, evidence from a dead guest, another boot
# after a death, vagrant destroy) is pybpfmap.vm.vagrant_check's; this script
# keeps the plumbing around it.
domain=$id-default   # vagrant-libvirt: default_prefix (set in add_box) + machine name
step "vagrant box add pybpfmap-$kernel (VAGRANT_HOME $VAGRANT_HOME)" add_box
step "network namespace $ns, virtlogd and libvirtd in it" start_libvirt
step "the guest tests in the box (pybpfmap vm box-check)" \
    "$here/../.venv/bin/python" -m pybpfmap vm box-check --netns "$ns" \
    --domain "$domain" --kernel "$kernel" --work "$work" \
    --boots "${PYBPFMAP_GUEST_BOOTS:-3}" --limit "${PYBPFMAP_GUEST_PYTEST_LIMIT:-900}"
say "OK"
