"""The dmesg splat checker on sample kernel output (host only, no VM, no root)."""

from __future__ import annotations

import pytest

from pybpfmap.splats import find_splats, format_splats

CLEAN = """\
[    0.000000] Linux version 6.1.0-50-amd64 (debian-kernel@lists.debian.org)
[    0.120000] Spectre V2 : WARNING: Unprivileged eBPF is enabled with eIBRS on
[    4.403382] Run /init as init process
[    9.572364] EXT4-fs (vda): mounted filesystem with ordered data mode.
[   11.141899] FS-Cache: Loaded
"""

WARN = """\
[   20.100000] ------------[ cut here ]------------
[   20.100001] trace type BPF program uses run-time allocation
[   20.100002] WARNING: CPU: 1 PID: 312 at kernel/bpf/verifier.c:12345 \
check_map_prog_compatibility+0x1a0/0x1b0
[   20.100003] Modules linked in: 9p 9pnet_virtio
[   20.100004] CPU: 1 PID: 312 Comm: python3 Not tainted 5.7.0 #1
[   20.100005] RIP: 0010:check_map_prog_compatibility+0x1a0/0x1b0
[   20.100006] Call Trace:
[   20.100007]  bpf_check+0x1234/0x2345
[   20.100008] ---[ end trace 0123456789abcdef ]---
[   20.200000] audit: type=1334 audit(1.0:2): prog-id=9 op=LOAD
"""

LOCKDEP = """\
[   30.000000] ============================================
[   30.000001] WARNING: possible recursive locking detected
[   30.000002] 6.1.0 #1 Not tainted
[   30.000003] --------------------------------------------
[   30.000004] python3/400 is trying to acquire lock:
[   30.000005] ffff888003a1e0d8 (&htab->buckets[i].raw_lock){....}-{2:2}, at: \
htab_lock_bucket+0x4d/0x80
"""

SAMPLES = [
    ("[ 1.0] BUG: soft lockup - CPU#0 stuck for 22s! [python3:300]", "soft_lockup"),
    ("[ 1.0] INFO: task kworker/0:1:12 blocked for more than 120 seconds.", "hung_task"),
    ("[ 1.0] rcu: INFO: rcu_preempt self-detected stall on CPU", "rcu_stall"),
    ("[ 1.0] rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "rcu_stall"),
    ("[ 1.0] BUG: KASAN: use-after-free in htab_map_update_elem+0x1/0x2", "kasan"),
    ("[ 1.0] general protection fault, probably for non-canonical address 0xdead: 0000",
     "gpf"),
    ("[ 1.0] Oops: 0000 [#1] PREEMPT SMP NOPTI", "oops"),
    ("[ 1.0] BUG: kernel NULL pointer dereference, address: 0000000000000008", "oops"),
    ("[ 1.0] kernel BUG at kernel/bpf/hashtab.c:100!", "bug"),
    ("[ 1.0] WARNING: possible circular locking dependency detected", "lockdep"),
    ("[ 1.0] Kernel panic - not syncing: sysrq triggered crash", "panic"),
    ("[ 1.0] BUG: sleeping function called from invalid context at mm/slab.h:1", "bug"),
]


def test_clean_boot_log_has_no_splat():
    assert find_splats(CLEAN) == []


def test_warn_splat_is_found_with_its_report():
    (s,) = find_splats(CLEAN + WARN)
    assert s.kind == "warning"
    assert "check_map_prog_compatibility" in s.line
    assert s.lineno == len(CLEAN.splitlines()) + 3
    assert s.text.splitlines()[-1].endswith("---[ end trace 0123456789abcdef ]---")
    assert "audit" not in s.text


def test_lockdep_recursive_locking_is_lockdep_not_plain_warning():
    (s,) = find_splats(LOCKDEP)
    assert s.kind == "lockdep"
    assert "htab_lock_bucket" in s.text


@pytest.mark.parametrize("line,kind", SAMPLES)
def test_each_deny_pattern(line, kind):
    assert [s.kind for s in find_splats(line)] == [kind]


def test_caller_allow_list_excuses_a_line():
    assert find_splats(WARN, allow=[r"kernel/bpf/verifier\.c"]) == []


def test_two_splats_are_two_entries():
    kinds = [s.kind for s in find_splats(WARN + LOCKDEP + SAMPLES[0][0])]
    assert kinds == ["warning", "lockdep", "soft_lockup"]


def test_no_timestamps_and_syslog_prefix():
    assert find_splats("<4>[ 5.5] WARNING: CPU: 0 PID: 1 at x.c:1 f+0x0/0x1")[0].kind == "warning"
    assert find_splats("WARNING: CPU: 0 PID: 1 at x.c:1 f+0x0/0x1")[0].kind == "warning"


def test_format_quotes_the_splat():
    out = format_splats(find_splats(WARN))
    assert out.startswith("warning at dmesg line 3:")
    assert "check_map_prog_compatibility+0x1a0/0x1b0" in out


def test_cli_exit_status(tmp_path, capsys):
    from pybpfmap.cli import main

    f = tmp_path / "dmesg.txt"
    f.write_text(CLEAN)
    assert main(["vm", "splats", str(f)]) == 0
    f.write_text(CLEAN + WARN)
    assert main(["vm", "splats", str(f)]) == 121
    assert "check_map_prog_compatibility" in capsys.readouterr().out


def test_report_stops_at_a_time_gap():
    text = ("[  875.155309] WARNING: CPU: 0 PID: 1476 at x.c:1 f+0x0/0x1\n"
            "[  875.155400] Modules linked in: 9p\n"
            "[  882.546971] IPv6: ADDRCONF(NETDEV_CHANGE): veth0: link becomes ready\n")
    (s,) = find_splats(text)
    assert "Modules linked in" in s.text and "IPv6" not in s.text
