"""``pybpfmap vm build|list|run|test|box|accel|splats``: the test VM (see :mod:`pybpfmap.vm`)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from pybpfmap.commands.args import (
    OutputDir,
    OutputFile,
    accel,
    add_kernel,
    memory_size,
    positive_float,
    positive_int,
)
from pybpfmap.guest import Accel
from pybpfmap.vm import catalog, suite

DEFAULT = [catalog.get(catalog.DEFAULT)]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "vm", help="build and run the qemu test VM",
        description="Debian test VM: build the image, run a command (default: the test "
                    "suite) in it, package it as a Vagrant box, check dmesg for splats.",
        epilog="exit statuses of `vm run`: CMD's own status when it finished (0 = passed), "
               "121 clean exit but kernel splat, 122 guest panic, 123 guest hung, "
               "124 timeout, 125 qemu lost or could not start; 1/2 pybpfmap errors.")
    sub = p.add_subparsers(dest="vm_command", metavar="VM_COMMAND", required=True)

    b = sub.add_parser("build", help="build (or reuse) the cached images")
    add_kernel(b, "the images to build", default=DEFAULT, results=False)
    b.add_argument("--json", action="store_true", help="print the images' facts as JSON")
    b.set_defaults(func=cmd_build)

    ls = sub.add_parser("list", help="the catalog kernels: release, era, built or not, size")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)

    r = sub.add_parser("run", help="run CMD as root in a fresh guest",
                       description="Boot the image (read-only base, per-run overlay) and run "
                                   "CMD in the project tree; default CMD: python3 -m pytest.")
    add_kernel(r, "boot these kernels in turn", default=DEFAULT, results=False)
    r.add_argument("--cpus", type=positive_int, default=2)
    r.add_argument("--memory", type=memory_size, default="2G")
    r.add_argument("--timeout", type=positive_float, default=1800,
                   help="overall limit, seconds")
    r.add_argument("--hang-timeout", type=positive_float, default=60,
                   help="seconds without a heartbeat from one vCPU before the guest counts "
                        "as hung")
    r.add_argument("--boot-timeout", type=positive_float, default=180,
                   help="seconds allowed from qemu start to CMD's start")
    r.add_argument("--accel", type=accel, metavar="{" + ",".join(a.value for a in Accel) + "}",
                   help="default: KVM if a cached probe boot showed it works, else tcg "
                        "(single-threaded)")
    r.add_argument("--results", action=OutputDir,
                   help="host folder for stdout.txt, dmesg.txt, junit.xml, "
                        "console.log, result.json and files CMD writes to "
                        "$PYBPFMAP_RESULTS (one subfolder per kernel when there "
                        "are several)")
    r.add_argument("--allow-splat", action="append", default=[], metavar="REGEX",
                   help="dmesg lines matching REGEX are not splats (repeatable)")
    r.add_argument("--quiet", action="store_true",
                   help="do not stream the guest console (CMD's stdout is still shown)")
    r.add_argument("--json", action="store_true",
                   help="print the runner's result as JSON on stdout (CMD's own stdout then "
                        "stays in stdout.txt)")
    r.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    r.set_defaults(func=cmd_run)

    t = sub.add_parser(
        "test", help="run the guest tests (sudo pytest) in each kernel's test VM",
        description="Boot each kernel once and run `python3 -m pytest -m \"guest or "
                    "kprobes\"` as root in the project tree inside it (the tests about the "
                    "running kernel); bring junit.xml back and print one line per kernel.",
        epilog="exit status: 0 when every kernel's tests passed; else the first failing "
               "kernel's: 1 (or pytest's status) for failed tests, 123 hung, 122 panic, "
               "124 timeout, 125 qemu lost.")
    add_kernel(t, "the kernels to test in", default=DEFAULT, results=False)
    t.add_argument("--timeout", type=positive_float, default=suite.TIMEOUT,
                   help=f"seconds allowed per kernel (default {suite.TIMEOUT:.0f})")
    t.add_argument("--hang-timeout", type=positive_float, default=suite.HANG_TIMEOUT,
                   help="seconds without a vCPU heartbeat before the guest counts as hung "
                        f"(default {suite.HANG_TIMEOUT:.0f})")
    t.add_argument("--accel", type=accel, metavar="{" + ",".join(a.value for a in Accel) + "}",
                   help="as for `vm run`")
    t.add_argument("--results", metavar="DIR", action=OutputDir,
                   help="host folder, one subfolder per kernel (default "
                        "results/vm-test-<kernels>-<time> in the project tree)")
    t.add_argument("--quiet", action="store_true", help="do not show the guest's pytest output")
    t.add_argument("--json", action="store_true",
                   help="print one JSON record per kernel on stdout")
    t.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="-- extra pytest arguments (e.g. -k NAME, -x)")
    t.set_defaults(func=cmd_test)

    x = sub.add_parser("box", help="package the image as a local Vagrant libvirt box")
    add_kernel(x, "the image to package", many=False, default=DEFAULT[0], results=False)
    x.add_argument("--output", metavar="FILE", action=OutputFile,
                   help="box file to write (default pybpfmap-K.box)")
    x.set_defaults(func=cmd_box)

    e = sub.add_parser("evidence", help="where a libvirt guest's vCPUs are (a hung Vagrant box)",
                       description="Samples every vCPU of a running libvirt domain through "
                                   "its monitor, as the runner's watchdog does: RIP "
                                   "symbolized with the --kernel image's kallsyms (its guests "
                                   "boot with nokaslr), interrupts on or off, the spin lock, "
                                   "the kernel text on the stack.")
    e.add_argument("--libvirt", required=True, metavar="DOMAIN", help="libvirt domain name")
    add_kernel(e, "whose image's kallsyms symbolize the addresses", many=False,
               default=DEFAULT[0], results=False)
    e.set_defaults(func=cmd_evidence)

    a = sub.add_parser("accel", help="print kvm or tcg: the accelerator `vm run` would use",
                       description="Prints kvm or tcg on stdout and why on stderr: KVM only "
                                   "if a (cached) boot probe of the --kernel image under KVM "
                                   "passed; PYBPFMAP_VM_ACCEL overrides.  The Vagrantfile "
                                   "picks its libvirt domain type with it.")
    add_kernel(a, "whose cached image the probe boots", many=False, default=DEFAULT[0],
               results=False)
    a.set_defaults(func=cmd_accel)

    c = sub.add_parser(
        "box-check", help="boot the Vagrant box under libvirt, run the guest tests in it",
        description="The Vagrant check's policy (vagrant/ci-up.sh runs it once the box is "
                    "added and libvirtd runs in --netns): vagrant up, the guest tests "
                    "(sudo pytest -m 'guest or kprobes') with a watcher on the guest's sshd, "
                    "the junit verdict, evidence from a guest whose kernel died, up to "
                    "--boots boots, vagrant destroy.")
    c.add_argument("--netns", required=True, help="the network namespace libvirtd runs in")
    c.add_argument("--domain", required=True, help="the libvirt domain vagrant makes")
    add_kernel(c, "the box's kernel", many=False, default=DEFAULT[0], results=False)
    c.add_argument("--work", required=True, type=Path, help="ci-up.sh's work folder")
    c.add_argument("--boots", type=positive_int, default=3, help="boots at most (default 3)")
    c.add_argument("--limit", type=positive_float, default=900,
                   help="the guest pytest's time limit, seconds (default 900)")
    c.set_defaults(func=cmd_box_check)

    s = sub.add_parser("splats", help="check dmesg text (a file or -) for kernel splats",
                       description="Exit 0 if clean, 121 if any unallowed splat is found.")
    s.add_argument("file", nargs="?", default="-", help="dmesg text file (default: stdin)")
    s.add_argument("--allow", action="append", default=[], metavar="REGEX")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_splats)

    k = sub.add_parser(
        "kconfig", help="the kernel configuration pybpfmap needs, or what CONFIG lacks",
        description="Without --check: the config fragment every pybpfmap feature needs "
                    "(`> pybpfmap.config`, then scripts/kconfig/merge_config.sh). With "
                    "--check CONFIG: each option CONFIG lacks and what that breaks, the "
                    "options the test VM needs to boot first.",
        epilog="exit status of --check: 0 nothing missing, 1 only features missing, "
               f"{EXIT_NO_BOOT} the kernel cannot boot in the test VM (one error line "
               "first), 2 CONFIG unreadable.")
    k.add_argument("--check", metavar="CONFIG", type=Path,
                   help="a .config, /boot/config-R or /proc/config.gz (gzip is recognised)")
    k.add_argument("--json", action="store_true",
                   help="with --check: the missing options as one JSON list")
    k.set_defaults(func=cmd_kconfig)


EXIT_NO_BOOT = 3  # vm kconfig --check: the options the test VM boots with are missing


def cmd_kconfig(args: argparse.Namespace) -> int:
    from pybpfmap.commands.args import emit
    from pybpfmap.errors import PybpfmapError, UsageError
    from pybpfmap.output import text_table
    from pybpfmap.vm import kconfig

    if args.check is None:
        sys.stdout.write(kconfig.fragment())
        return 0
    try:
        config = kconfig.read(args.check)
    except PybpfmapError as e:
        raise UsageError("--check", f"{args.check}: {e.meaning}", e.err) from None
    missing = kconfig.check(config)
    status = 1 if missing else 0
    try:
        kconfig.require_boot(config, f"--check {args.check}")
    except PybpfmapError as e:  # said first, then the table, which has the rest
        print(f"pybpfmap vm: error: {e.message()}", file=sys.stderr, flush=True)
        status = EXIT_NO_BOOT

    def text(_: list) -> str:
        if not missing:
            return f"{args.check}: has every option pybpfmap needs\n"
        return text_table(["option", "is", "needs", "breaks"],
                          [[f"CONFIG_{m.option.name}", m.have, m.need,
                            ("BOOT: " if m.option.boot else "") + m.option.feature.serves]
                           for m in missing])

    emit(args, [m.to_json() for m in missing], text)
    return status


def cmd_build(args: argparse.Namespace) -> int:
    from pybpfmap.output import print_json
    from pybpfmap.vm.build import ensure_image

    facts = []
    t0 = time.monotonic()
    for n, kernel in enumerate(args.kernels, 1):
        print(f"pybpfmap vm: [{n}/{len(args.kernels)}] {kernel.name}", file=sys.stderr,
              flush=True)
        img = ensure_image(kernel)
        facts.append(img.facts() | {"path": str(img.path)})
        if not args.json:
            print(f"{kernel.name}: kernel {img.release}, image {img.path}")
    print(f"pybpfmap vm: {len(facts)} image(s) ready in {time.monotonic() - t0:.0f} s",
          file=sys.stderr)
    if args.json:
        print_json(facts)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from pybpfmap import era
    from pybpfmap.kfacts import KernelFacts
    from pybpfmap.output import human_bytes, print_json, table
    from pybpfmap.vm.image import brought_images, find_image, image_size, release_of

    rows = []
    for k in catalog.KERNELS:
        img = find_image(k)
        release = img.release if img else None
        facts = KernelFacts.assumed_from(release_of(k), k.preempt_rt)  # not booted here
        rows.append({"name": k.name, "userspace": k.userspace, "series": k.series,
                     "release": release, "era": era.era_of(facts).name,
                     "built": img is not None, "image": str(img.path) if img else None,
                     "size": image_size(img) if img else None, "summary": k.summary,
                     "origin": None})
    # kernels users brought (--kernel PATH): their images, with where they came from
    for img, info in brought_images():
        c = info["catalog"]
        facts = KernelFacts.assumed_from(img.release, c.get("preempt_rt", False))
        rows.append({"name": img.name, "userspace": c["userspace"], "series": img.release,
                     "release": img.release, "era": era.era_of(facts).name + " (by version)",
                     "built": True, "image": str(img.path), "size": image_size(img),
                     "summary": c["summary"], "origin": c["origin"]})
    if args.json:
        print_json(rows)
        return 0
    table(["name", "userspace", "release", "era", "built", "size", "what"],
          [[r["name"], r["userspace"], r["release"] or f"{r['series']}.x (not built)",
            r["era"], "yes" if r["built"] else "no", human_bytes(r["size"]), r["summary"]]
           for r in rows])
    return 0


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds the context managers that own qemu


def cmd_run(args: argparse.Namespace) -> int:
    from pybpfmap.output import print_json
    from pybpfmap.splats import format_splats
    from pybpfmap.vm.run import results_folder, run_in_vm
    from pybpfmap.vm.runner import Streams

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    signal.signal(signal.SIGTERM, _sigterm)
    err = sys.stderr
    # With --json our stdout carries only the runner's JSON: CMD's stays in stdout.txt.
    streams = Streams(None if args.json else sys.stdout, None if args.quiet else err)
    results = []
    for kernel in args.kernels:
        folder = results_folder(args.results, "vm", kernel, len(args.kernels) > 1)
        r = run_in_vm(cmd or None, kernel=kernel, cpus=args.cpus, memory=args.memory,
                      timeout=args.timeout, hang_timeout=args.hang_timeout,
                      boot_timeout=args.boot_timeout, results_dir=folder, streams=streams,
                      accel=args.accel, allow_splats=tuple(args.allow_splat))
        print(f"pybpfmap vm: {r.summary()}", file=err)
        if r.splats:
            print(format_splats(r.splats), file=err)
        if r.evidence:
            print(r.evidence_text(), file=err)
        print(f"pybpfmap vm: results in {r.results_dir}", file=err)
        results.append(r)
    if args.json:
        print_json([r.to_json() for r in results])
    # The worst outcome decides: the first run that did not pass.
    return next((r.status for r in results if r.status), 0)


def cmd_box(args: argparse.Namespace) -> int:
    from pybpfmap.vm.box import make_box

    name = args.kernel.name
    path = make_box(args.kernel, args.output or f"pybpfmap-{name}.box")
    print(f"box written: {path}\n  vagrant box add --name pybpfmap-{name} {path}\n"
          f"  cd vagrant && PYBPFMAP_BOX={name} vagrant up")
    return 0


def cmd_box_check(args: argparse.Namespace) -> int:
    from pybpfmap.vm.vagrant_check import Check

    return Check(args.netns, args.domain, args.kernel, args.work, args.limit).main(args.boots)


def cmd_evidence(args: argparse.Namespace) -> int:
    from pybpfmap.errors import EnvironmentProblem
    from pybpfmap.vm.image import find_image
    from pybpfmap.vm.watchdog import collect_evidence, libvirt_monitor

    image = find_image(args.kernel)
    if image is None:
        raise EnvironmentProblem("--kernel", f"no {args.kernel.name} image to read kallsyms "
                                 f"from (pybpfmap vm build --kernel {args.kernel.name})")
    ev = collect_evidence(libvirt_monitor(args.libvirt), None,
                          [image.kallsyms, image.system_map],
                          note=f"libvirt domain {args.libvirt}, symbols of {image.name}")
    print(ev.text())
    return 0 if ev.qemu_answers else 1


def cmd_accel(args: argparse.Namespace) -> int:
    import os

    from pybpfmap.errors import EnvironmentProblem
    from pybpfmap.vm.accel import choose_accel
    from pybpfmap.vm.image import find_image

    image = find_image(args.kernel)
    # choose_accel returns a PYBPFMAP_VM_ACCEL override before it needs the image.
    if image is None and not os.environ.get("PYBPFMAP_VM_ACCEL"):
        raise EnvironmentProblem("--kernel", "no cached image to run the KVM boot probe "
                                 f"with (pybpfmap vm build --kernel {args.kernel.name})")
    try:
        accel, why = choose_accel(image)
    except OSError as e:
        raise EnvironmentProblem("KVM boot probe", f"{e}; run `pybpfmap vm accel` once "
                                 "as root to record it") from e
    print("kvm" if accel is Accel.KVM else "tcg")
    print(f"pybpfmap vm accel: {accel.value}: {why}", file=sys.stderr)
    return 0


def cmd_splats(args: argparse.Namespace) -> int:
    from pybpfmap.errors import EnvironmentProblem
    from pybpfmap.splats import find_splats, format_splats
    from pybpfmap.vm.outcome import EXIT_SPLAT

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


def cmd_test(args: argparse.Namespace) -> int:

    from pybpfmap.output import print_json
    from pybpfmap.vm.run import results_folder
    from pybpfmap.vm.runner import Streams
    from pybpfmap.vm.suite import run_suite

    extra = args.pytest_args[1:] if args.pytest_args[:1] == ["--"] else args.pytest_args
    signal.signal(signal.SIGTERM, _sigterm)
    shown = None if args.quiet or args.json else sys.stdout
    runs = []
    for n, kernel in enumerate(args.kernels, 1):
        print(f"pybpfmap vm test: [{n}/{len(args.kernels)}] {kernel.name}", file=sys.stderr,
              flush=True)
        run = run_suite(kernel, results_folder(args.results, "vm-test", kernel, many=True),
                        pytest_args=extra, timeout=args.timeout,
                        hang_timeout=args.hang_timeout, accel=args.accel,
                        streams=Streams(shown, None))
        print(f"pybpfmap vm test: {run.line()}", file=sys.stderr, flush=True)
        if run.vm.evidence:
            print(run.vm.evidence_text(), file=sys.stderr)
        runs.append(run)
    if args.json:
        print_json([r.to_json() for r in runs])
    else:
        for r in runs:
            print(f"pybpfmap vm test: {r.kernel}: results in {r.vm.results_dir}")
        for r in runs:
            print(f"{'ok  ' if r.ok else 'FAIL'} {r.line()}")
    return next((r.status for r in runs if r.status), 0)
