# shellcheck shell=sh
# build_map_perf_test RELEASE DEST: the kernel's own samples/bpf/map_perf_test,
# built for kernel RELEASE from Debian's matching linux-source-X.Y package, for
# `pybpfmap bench --peer map_perf_test` to run next to pybpfmap's syscall mode.
#
# Sourced by provision.sh --guest (inside the image chroot or a Vagrant box);
# can also be run directly:  sh vagrant/map-perf-test.sh RELEASE DEST
#
# Needs root, apt, and the kernel RELEASE with its linux-headers-RELEASE
# installed.  Installs linux-source-X.Y at exactly the headers' source version,
# plus the build tools ($MPT_BUILD_PKGS); extracts from the 130-170 MB source
# tarball only the files named below; builds; installs into DEST
#
#   map_perf_test                    the user binary (links Debian's libbpf)
#   map_perf_test_kern.o | map_perf_test.bpf.o
#                                    the BPF object, named as the binary opens
#                                    it (argv[0] + "_kern.o" or ".bpf.o")
#   map_perf_test_kern.c | map_perf_test.bpf.c
#                                    the BPF source built (provenance; pybpfmap
#                                    reads the triples per event from it)
#   VERSION                          the source package version, one line
#   BUILD_INFO                       key=value: release, source, layout,
#                                    NO_PREALLOC allocator, tool versions
#
# then purges every package it installed except the binary's run-time
# libraries (the image has libbpf1/libelf1/zlib1g already, for bpftool and
# BCC); that also removes the tarball.  Idempotent: returns at once when DEST
# holds a build for RELEASE.  Fails with one "map-perf-test: ..." line (plus
# the tail of the apt or compiler log, kept in /tmp) when anything is missing.
#
# Two source layouts (checked on Debian's 5.10.262, 6.1.176, 6.12.117 and
# 7.3.4 sources):
#
# "kern"  (5.10, 6.1): samples/bpf/map_perf_test_kern.c includes kernel
#   headers (linux/skbuff.h, uapi/linux/bpf.h) and trace_common.h (SYSCALL()
#   -> "__x64_sys_..." for its SEC("kprobe/...") names).  Built as
#   samples/bpf/Makefile does: clang for the host target with the kernel's
#   own include flags, -emit-llvm, then opt | llvm-dis | llc -march=bpf.  The
#   rule runs inside kbuild (make -C /usr/src/linux-headers-RELEASE M=...) so
#   that $(LINUXINCLUDE) is the kernel's for whatever header layout it has.
#   -include samples/bpf/asm_goto_workaround.h as the in-tree rule does.
# "bpf"   (6.12, 7.3): samples/bpf/map_perf_test.bpf.c includes vmlinux.h and
#   uses SEC("ksyscall/...") (libbpf picks the syscall wrapper).  Built as
#   the in-tree rule does: clang --target=bpf against a vmlinux.h that bpftool
#   dumps from the BTF of RELEASE's own kernel image (/boot/vmlinuz-RELEASE,
#   unpacked with the tree's scripts/extract-vmlinux: Debian ships no vmlinux
#   and the kernel running the build may be another one).
#
# The user halves (map_perf_test_user.c) load the object with libbpf in all
# four (bpf_object__open_file, bpf_program__attach); none uses the old
# samples/bpf/bpf_load.c.  Differences that matter here:
#   * 5.10 calls bpf_create_map_node() and bpf_map__resize(), which libbpf 1.0
#     removed; Debian's libbpf-dev is 1.1 (bookworm) / 1.5 (trixie), so such a
#     source gets a small -include'd header mapping them onto bpf_map_create()
#     and bpf_map__set_max_entries() (the calls 6.1 uses).
#   * 5.10 raises RLIMIT_MEMLOCK itself; 6.1+ leave it to libbpf 1.x (which
#     does it only on kernels without memcg accounting of BPF memory, < 5.11).
#   * 5.10's BPF programs run one update/lookup/delete triple per syscall;
#     since Linux kernel commit 89dc8d0c38e0 ("samples/bpf: Reduce syscall
#     overhead in map_perf_test.") (in v6.1) they run 10 in a loop.  The
#     output lines are the same in all four.
#   * default max_cnt is 1000000 in 5.10, 10000 from 6.1 (pybpfmap passes it).
#   * 6.1+ use struct bpf_lpm_trie_key_u8 (a uapi addition backported to
#     6.1.y): the user half is compiled against the userspace's
#     linux-libc-dev, which must have it (bookworm's 6.1.176 does).

MPT_BUILD_PKGS="clang llvm libbpf-dev libelf-dev zlib1g-dev make xz-utils gcc libc6-dev
                bpftool zstd"

_mpt_die() {
    echo "map-perf-test: $*" >&2
    exit 1
}

# _mpt_run LOG WHAT CMD...: run CMD with output to LOG; on failure show the
# log's tail and die naming WHAT.
_mpt_run() {
    _log=$1 _what=$2
    shift 2
    if ! "$@" >"$_log" 2>&1; then
        tail -n 25 "$_log" >&2
        _mpt_die "$_what failed (log: $_log)"
    fi
}

_mpt_installed() {
    dpkg-query -W -f='${db:Status-Status} ${Package}\n' 2>/dev/null \
        | sed -n 's/^installed //p' | sort
}

# clang's own system include directories as -idirafter flags: the BPF
# compiles use -nostdinc or --target=bpf, and samples/bpf adds these back.
_mpt_sys_includes() {
    clang -v -E - </dev/null 2>&1 \
        | sed -n '/<...> search starts here:/,/End of search list./s|^ \(/.*\)|-idirafter \1|p'
}

# "kern" layout: map_perf_test_kern.c -> map_perf_test_kern.o, in kbuild.
_mpt_bpf_kern() {
    workaround=""
    [ -f "$src/asm_goto_workaround.h" ] && workaround="-include asm_goto_workaround.h"
    # -g: llc turns the debug info into the BTF that libbpf needs for the
    # .maps section (BTF-defined maps, in both 5.10 and 6.1).
    cat >"$src/Kbuild" <<EOF
always-y := map_perf_test_kern.o
\$(obj)/map_perf_test_kern.o: \$(src)/map_perf_test_kern.c
	clang \$(NOSTDINC_FLAGS) \$(LINUXINCLUDE) -I\$(src) $(_mpt_sys_includes | tr '\n' ' ') \\
		-D__KERNEL__ -D__BPF_TRACING__ -D__TARGET_ARCH_\$(SRCARCH) \\
		-Wno-unused-value -Wno-pointer-sign -Wno-compare-distinct-pointer-types \\
		-Wno-gnu-variable-sized-type-not-at-end -Wno-address-of-packed-member \\
		-Wno-tautological-compare -Wno-unknown-warning-option \\
		-fno-stack-protector -fno-asynchronous-unwind-tables -g $workaround \\
		-O2 -emit-llvm -Xclang -disable-llvm-passes -c \$< -o \$@.bc
	opt -O2 -mtriple=bpf-pc-linux \$@.bc | llvm-dis | llc -march=bpf -filetype=obj -o \$@
EOF
    _mpt_run "$work/bpf.log" "compiling map_perf_test_kern.c against $kdir" \
        make -C "$kdir" M="$src" modules
}

# "bpf" layout: map_perf_test.bpf.c -> map_perf_test.bpf.o against vmlinux.h.
_mpt_bpf_vmlinux_h() {
    image=/boot/vmlinuz-$release
    [ -f "$image" ] || _mpt_die "$image missing: the kernel image's BTF makes vmlinux.h"
    extract=$work/$top/scripts/extract-vmlinux
    [ -f "$extract" ] || _mpt_die "scripts/extract-vmlinux not in $tarball"
    sh "$extract" "$image" >"$work/vmlinux" 2>"$work/extract.log" \
        || _mpt_die "cannot unpack $image ($(tail -n 1 "$work/extract.log"))"
    # shellcheck disable=SC2016
    _mpt_run "$work/btf.log" "bpftool btf dump of $image" \
        sh -c 'bpftool btf dump file "$1" format c >"$2"' sh "$work/vmlinux" "$src/vmlinux.h"
    case $(dpkg --print-architecture) in
    amd64) srcarch=x86 ;;
    arm64) srcarch=arm64 ;;
    *) _mpt_die "no __TARGET_ARCH for $(dpkg --print-architecture)" ;;
    esac
    # The source includes <errno.h> (for ENOENT/EINVAL); with --target=bpf
    # glibc's gnu/stubs.h sees no __x86_64__ and wants gnu/stubs-32.h, which
    # only libc6-dev-i386 has (as for any BPF program that includes libc headers).
    if [ "$(dpkg --print-architecture)" = amd64 ]; then
        _mpt_run "$work/apt-install-i386.log" "apt-get install libc6-dev-i386" \
            apt-get install -y -q --no-install-recommends libc6-dev-i386
    fi
    # shellcheck disable=SC2046
    _mpt_run "$work/bpf.log" "compiling map_perf_test.bpf.c" \
        clang -g -O2 --target=bpf -D__TARGET_ARCH_$srcarch \
            -Wno-compare-distinct-pointer-types -I"$src" $(_mpt_sys_includes) \
            -c "$src/map_perf_test.bpf.c" -o "$src/map_perf_test.bpf.o"
}

# _mpt_purge_added KEEP...: purge every package installed since $work/before
# except KEEP; refuse (status 1) if apt would remove anything else.
_mpt_purge_added() {
    _mpt_installed | comm -13 "$work/before" - >"$work/added"
    purge=$(while read -r p; do
                case " $* " in *" $p "*) ;; *) printf '%s ' "$p" ;; esac
            done <"$work/added")
    [ -n "$purge" ] || return 0
    # shellcheck disable=SC2086
    extra=$(apt-get -s purge $purge 2>/dev/null | sed -n 's/^Purg \([^ :]*\).*/\1/p' \
        | while read -r p; do
              case " $purge " in *" $p "*) ;; *) printf '%s ' "$p" ;; esac
          done)
    if [ -n "$extra" ]; then
        echo "map-perf-test: not purging the build packages: apt would also remove $extra" >&2
        return 1
    fi
    # shellcheck disable=SC2086
    if ! apt-get purge -y -q $purge >"$work/apt-purge.log" 2>&1; then
        tail -n 25 "$work/apt-purge.log" >&2
        echo "map-perf-test: apt-get purge of the build packages failed" \
             "(log: $work/apt-purge.log)" >&2
        return 1
    fi
}

# On success the work directory goes; on failure its logs stay and the
# packages this run installed are purged again (an image build that goes on
# without the peer must not keep 350 MB of compilers).
_mpt_on_exit() {
    if [ "$1" -eq 0 ]; then
        rm -rf "$work"
    elif [ -z "${purged:-}" ] && [ -f "$work/before" ] && _mpt_purge_added; then
        echo "map-perf-test: build packages removed again; logs in $work" >&2
    fi
}

build_map_perf_test() (
    # A subshell: set -e, the EXIT trap and the variables stay inside.
    set -eu
    [ $# -eq 2 ] || _mpt_die "usage: build_map_perf_test RELEASE DEST"
    release=$1 dest=$2
    export DEBIAN_FRONTEND=noninteractive
    [ "$(id -u)" = 0 ] || _mpt_die "must run as root (apt-get, /usr/src)"
    case $dest in /*) ;; *) _mpt_die "DEST must be an absolute path, not '$dest'" ;; esac
    if [ -f "$dest/BUILD_INFO" ] && [ -x "$dest/map_perf_test" ] \
            && grep -qxF "release=$release" "$dest/BUILD_INFO" \
            && [ -s "$dest/$(sed -n 's/^bpf_object=//p' "$dest/BUILD_INFO")" ]; then
        return 0
    fi

    # The kernel's headers: the "kern" layout is built against them, and
    # their source version names the linux-source to use.
    headers_pkg=linux-headers-$release
    kdir=/usr/src/$headers_pkg
    dpkg-query -W -f='${db:Status-Status}' "$headers_pkg" 2>/dev/null | grep -qx installed \
        || _mpt_die "$headers_pkg is not installed (install the kernel's headers first)"
    [ -f "$kdir/Makefile" ] || _mpt_die "$kdir/Makefile missing ($headers_pkg broken?)"
    # 6.1.0-50-amd64 -> 6.1; 7.3.4+deb13-amd64 -> 7.3
    series=$(echo "$release" | sed -n 's/^\([0-9]\{1,\}\.[0-9]\{1,\}\)[.-].*/\1/p')
    [ -n "$series" ] || _mpt_die "cannot read a kernel series X.Y from release '$release'"
    src_pkg=linux-source-$series
    # linux-headers-6.1.0-50-amd64 6.1.176-1 -> linux-source-6.1=6.1.176-1
    src_version=$(dpkg-query -W -f='${source:Version}' "$headers_pkg")

    work=$(mktemp -d /tmp/map-perf-test.XXXXXX) || _mpt_die "cannot create a directory in /tmp"
    trap '_mpt_on_exit $?' EXIT
    echo "map-perf-test: building samples/bpf/map_perf_test for $release" \
         "from $src_pkg $src_version"

    # what was there before: everything else installed from here on is
    # purged at the end (an empty list would mean purging the whole system)
    _mpt_installed >"$work/before"
    [ -s "$work/before" ] || _mpt_die "dpkg-query lists no installed package"
    _mpt_run "$work/apt-update.log" "apt-get update" apt-get update -q
    if ! apt-cache madison "$src_pkg" 2>/dev/null | awk '{print $3}' | grep -qxF "$src_version"
    then
        known=$(apt-cache madison "$src_pkg" 2>/dev/null | awk '{print $3}' | tr '\n' ' ')
        _mpt_die "$src_pkg=$src_version (the source of $headers_pkg) is not in the" \
                 "configured apt sources (they offer: ${known:-none}); for 5.10 add" \
                 "bullseye-security, for backported kernels the backports suite"
    fi
    # shellcheck disable=SC2086
    _mpt_run "$work/apt-install.log" "apt-get install $src_pkg=$src_version $MPT_BUILD_PKGS" \
        apt-get install -y -q --no-install-recommends "$src_pkg=$src_version" $MPT_BUILD_PKGS
    for tool in clang opt llvm-dis llc gcc make bpftool; do
        command -v "$tool" >/dev/null || _mpt_die "$tool not found after installing $MPT_BUILD_PKGS"
    done

    tarball=/usr/src/$src_pkg.tar.xz
    [ -f "$tarball" ] || _mpt_die "$tarball missing after installing $src_pkg"
    top=$src_pkg  # the tarball's top directory
    # One pass over the tarball (xz: 7-10 s) for the files of either layout;
    # those of the other layout are missing, so tar's status is not the test.
    members=""
    for f in map_perf_test_user.c map_perf_test_kern.c trace_common.h asm_goto_workaround.h \
             map_perf_test.bpf.c; do
        members="$members $top/samples/bpf/$f"
    done
    # shellcheck disable=SC2086
    tar -xJf "$tarball" -C "$work" $members "$top/scripts/extract-vmlinux" \
        "$top/kernel/bpf/hashtab.c" >"$work/tar.log" 2>&1 || true
    src=$work/$top/samples/bpf
    if [ -f "$src/map_perf_test.bpf.c" ]; then
        layout=bpf bpf_src=map_perf_test.bpf.c bpf_obj=map_perf_test.bpf.o
        need="samples/bpf/map_perf_test.bpf.c scripts/extract-vmlinux"
    else
        layout=kern bpf_src=map_perf_test_kern.c bpf_obj=map_perf_test_kern.o
        need="samples/bpf/map_perf_test_kern.c samples/bpf/trace_common.h"
    fi
    for f in $need samples/bpf/map_perf_test_user.c kernel/bpf/hashtab.c; do
        [ -s "$work/$top/$f" ] || _mpt_die "$f not in $tarball"
    done

    if [ $layout = kern ]; then _mpt_bpf_kern; else _mpt_bpf_vmlinux_h; fi
    [ -s "$src/$bpf_obj" ] || _mpt_die "no $bpf_obj after the BPF compile (log: $work/bpf.log)"

    # User half.  Sources written for libbpf < 1.0 (5.10) get the two calls
    # libbpf 1.0 removed, as thin wrappers over their replacements.
    compat=""
    if grep -q 'bpf_create_map_node\|bpf_map__resize' "$src/map_perf_test_user.c"; then
        cat >"$src/libbpf_compat.h" <<'EOF'
/* libbpf < 1.0 calls used by samples/bpf/map_perf_test_user.c before v5.18 */
#define _GNU_SOURCE	/* as the sample's first line: CPU_SET() needs it */
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
static inline int bpf_create_map_node(enum bpf_map_type type, const char *name,
		int key_size, int value_size, int max_entries, __u32 map_flags,
		int node)
{
	LIBBPF_OPTS(bpf_map_create_opts, opts, .map_flags = map_flags);

	if (node >= 0) {
		opts.map_flags |= BPF_F_NUMA_NODE;
		opts.numa_node = node;
	}
	return bpf_map_create(type, name, key_size, value_size, max_entries, &opts);
}
static inline int bpf_map__resize(struct bpf_map *map, __u32 max_entries)
{
	return bpf_map__set_max_entries(map, max_entries);
}
EOF
        compat="-include $src/libbpf_compat.h"
    fi
    # shellcheck disable=SC2086
    _mpt_run "$work/user.log" "compiling map_perf_test_user.c against libbpf-dev" \
        gcc -Wall -O2 $compat -I"$src" -o "$src/map_perf_test" "$src/map_perf_test_user.c" \
            -lbpf -lelf -lz -lrt

    # Which allocator BPF_F_NO_PREALLOC elements come from: bpf_mem_alloc
    # since Linux kernel commit fba1a1c6c912 ("bpf: Convert hash map to
    # bpf_mem_alloc.") (in v6.1), kmalloc/alloc_percpu before.  The sample
    # still calls those tests "kmalloc".
    if grep -q 'bpf_mem_cache_alloc' "$work/$top/kernel/bpf/hashtab.c"; then
        allocator=bpf_mem_alloc
    else
        allocator=kmalloc
    fi

    # (explicit checks: set -e does nothing when the caller runs this
    # function in an if or || list)
    mkdir -p "$dest" || _mpt_die "cannot create $dest"
    # a build for another kernel may have left the other layout's files
    rm -f "$dest"/map_perf_test* "$dest/VERSION" "$dest/BUILD_INFO"
    if ! { install -m 0755 "$src/map_perf_test" "$dest/map_perf_test" \
           && install -m 0644 "$src/$bpf_obj" "$src/$bpf_src" "$dest/" \
           && echo "$src_version" >"$dest/VERSION"; }; then
        _mpt_die "cannot install into $dest"
    fi
    {
        echo "release=$release"
        echo "source_package=$src_pkg"
        echo "source_version=$src_version"
        echo "layout=$layout"
        echo "bpf_source=$bpf_src"
        echo "bpf_object=$bpf_obj"
        echo "no_prealloc_allocator=$allocator"
        echo "libbpf=$(dpkg-query -W -f='${Version}' libbpf-dev)"
        echo "clang=$(clang --version | sed -n 1p)"
        echo "libbpf_compat=$([ -n "$compat" ] && echo yes || echo no)"
    } >"$dest/BUILD_INFO" || _mpt_die "cannot write $dest/BUILD_INFO"

    # Keep what the binary needs at run time; purge everything else this
    # function installed (that removes the tarball with linux-source-X.Y).
    runtime=""
    for lib in $(ldd "$dest/map_perf_test" | awk '$3 ~ /^\// {print $3}'); do
        # merged /usr: dpkg may know the file under /lib or under /usr/lib
        owner=$(dpkg-query -S "$lib" 2>/dev/null || dpkg-query -S "/usr$lib" 2>/dev/null \
                || dpkg-query -S "${lib#/usr}" 2>/dev/null || true)
        runtime="$runtime ${owner%%:*}"
    done
    purged=yes
    # shellcheck disable=SC2086
    _mpt_purge_added $runtime || exit 1
    [ ! -e "$tarball" ] || rm -f "$tarball"
    if ldd "$dest/map_perf_test" | grep -q 'not found'; then
        ldd "$dest/map_perf_test" >&2
        _mpt_die "$dest/map_perf_test misses a library after the purge"
    fi
    echo "map-perf-test: installed in $dest ($layout layout, NO_PREALLOC allocator" \
         "$allocator)"
)

# Run directly: sh map-perf-test.sh RELEASE DEST
case ${0##*/} in
map-perf-test.sh) build_map_perf_test "$@" ;;
esac
