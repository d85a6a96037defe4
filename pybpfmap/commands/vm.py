"""``pybpfmap vm build|run|box|splats``: the test VM (see :mod:`pybpfmap.vm`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vm", help="build and run the qemu test VM",
        description="Debian test VM: build the image, run a command (default: the test "
                    "suite) in it, package it as a Vagrant box, check dmesg for splats.",
        epilog="exit statuses of `vm run`: CMD's own status when it finished (0 = passed), "
               "121 clean exit but kernel splat, 122 guest panic, 123 guest hung, "
               "124 timeout, 125 qemu lost or could not start; 1/2 pybpfmap errors.")
    sub = p.add_subparsers(dest="vm_command", metavar="VM_COMMAND", required=True)

    b = sub.add_parser("build", help="build (or reuse) the cached image")
    b.add_argument("--kernel", dest="kernels", action="append", choices=["bookworm", "trixie"],
                   help="Debian suite whose kernel and userland the image has; repeatable "
                        "(default: bookworm)")
    b.add_argument("--json", action="store_true", help="print the image's facts as JSON")
    b.set_defaults(func=cmd_build)

    r = sub.add_parser("run", help="run CMD as root in a fresh guest",
                       description="Boot the image (read-only base, per-run overlay) and run "
                                   "CMD in the project tree; default CMD: python3 -m pytest.")
    r.add_argument("--kernel", default="bookworm", choices=["bookworm", "trixie"])
    r.add_argument("--cpus", type=int, default=2)
    r.add_argument("--memory", default="2G")
    r.add_argument("--timeout", type=float, default=1800, help="overall limit, seconds")
    r.add_argument("--hang-timeout", type=float, default=60,
                   help="seconds without a guest heartbeat before the guest counts as hung")
    r.add_argument("--boot-timeout", type=float, default=120,
                   help="seconds allowed from qemu start to the first heartbeat")
    r.add_argument("--accel", choices=["kvm", "tcg", "tcg-mttcg"],
                   help="default: KVM if a cached probe boot showed it works, else tcg "
                        "(single-threaded)")
    r.add_argument("--results", help="host folder for dmesg.txt, junit.xml, console.log, "
                                     "result.json and files CMD writes to $PYBPFMAP_RESULTS")
    r.add_argument("--allow-splat", action="append", default=[], metavar="REGEX",
                   help="dmesg lines matching REGEX are not splats (repeatable)")
    r.add_argument("--quiet", action="store_true", help="do not stream the guest console")
    r.add_argument("--json", action="store_true", help="print the result as JSON at the end")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    r.set_defaults(func=cmd_run)

    x = sub.add_parser("box", help="package the image as a local Vagrant libvirt box")
    x.add_argument("--kernel", default="bookworm", choices=["bookworm", "trixie"])
    x.add_argument("--output", default="pybpfmap.box", help="box file to write")
    x.set_defaults(func=cmd_box)

    s = sub.add_parser("splats", help="check dmesg text (a file or -) for kernel splats",
                       description="Exit 0 if clean, 121 if any unallowed splat is found.")
    s.add_argument("file", nargs="?", default="-", help="dmesg text file (default: stdin)")
    s.add_argument("--allow", action="append", default=[], metavar="REGEX")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_splats)


def cmd_build(args: argparse.Namespace) -> int:
    from pybpfmap.vm import ensure_image

    all_facts = []
    for kernel in args.kernels or ["bookworm"]:
        img = ensure_image(kernel)
        all_facts.append({"suite": img.suite, "kernel_release": img.release,
                          "path": str(img.path), "disk": str(img.disk), "key": img.key})
        if not args.json:
            print(f"{img.suite}: kernel {img.release}, image {img.path}")
    if args.json:
        print(json.dumps(all_facts[0] if len(all_facts) == 1 else all_facts, indent=2))
    return 0


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds the context managers that own qemu


def cmd_run(args: argparse.Namespace) -> int:
    from pybpfmap.vm import run_in_vm

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    signal.signal(signal.SIGTERM, _sigterm)
    r = run_in_vm(cmd or None, kernel=args.kernel, cpus=args.cpus, memory=args.memory,
                  timeout=args.timeout, hang_timeout=args.hang_timeout,
                  boot_timeout=args.boot_timeout, results_dir=args.results,
                  # with --json, stdout carries only the JSON: the console goes to stderr
                  stream=False if args.quiet else (sys.stderr if args.json else True),
                  accel=args.accel,
                  allow_splats=tuple(args.allow_splat))
    from pybpfmap.vm.splats import format_splats

    err = sys.stderr
    print(f"pybpfmap vm: {r.outcome}: {r.message} [kernel {r.kernel_release}, accel {r.accel}, "
          f"boot-to-CMD {r.boot_seconds} s, total {r.seconds} s, exit status {r.status}]",
          file=err)
    if r.splats:
        print(format_splats(r.splats), file=err)
    if r.evidence:
        print(r.evidence, file=err)
    print(f"pybpfmap vm: results in {r.results_dir}", file=err)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
    return r.status


def cmd_box(args: argparse.Namespace) -> int:
    from pybpfmap.vm.box import make_box

    path = make_box(args.kernel, args.output)
    print(f"box written: {path}\n  vagrant box add --name pybpfmap {path}")
    return 0


def cmd_splats(args: argparse.Namespace) -> int:
    from pybpfmap.errors import EnvironmentProblem
    from pybpfmap.vm.runner import EXIT_SPLAT
    from pybpfmap.vm.splats import find_splats, format_splats

    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, errors="replace") as f:
                text = f.read()
    except OSError as e:
        raise EnvironmentProblem(args.file, "cannot read dmesg text", e.errno) from e
    found = find_splats(text, args.allow)
    if args.json:
        print(json.dumps([s.to_dict() for s in found], indent=2))
    elif found:
        print(format_splats(found))
    else:
        print("no kernel splats")
    return EXIT_SPLAT if found else 0
