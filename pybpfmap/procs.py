"""Child processes: the one owner of starting, stopping and waiting for them.

Every child pybpfmap starts (qemu, map_perf_test, bcc tools, workloads,
triggers, report sections) leads a process group of its own and:

- gets the default SIGINT disposition (a shell's background job inherits
  SIGINT ignored, and a tool then never prints its summary on Ctrl-C);
- dies with pybpfmap: the child itself by ``PR_SET_PDEATHSIG``, and whatever
  it forked by the *guard*, one small process per pybpfmap process that holds
  the read end of a pipe and SIGKILLs every group still registered with it
  when the write end closes -- which the kernel does when pybpfmap exits, also
  by SIGKILL, when no ``finally`` runs;
- is stopped by :meth:`Group.stop`: SIGINT (as Ctrl-C), a grace period,
  SIGKILL to the whole group, then a wait until ``/proc`` shows no member of
  the group alive.  EOF on a child's pipes does not say that: ``do_exit()``
  closes a task's files before it is a zombie.

Readiness is a file descriptor the child writes a line to
(:func:`tell_ready`, in the spirit of the kernel selftests' ``KSFT_READY_FD``),
never a ``sleep()``.  :func:`wait_until` is the one deadline-polling loop.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

GRACE = 10.0        # SIGINT to SIGKILL
KILL_WAIT = 30.0    # SIGKILL to "no member alive"; past it the group is stuck in the kernel
READY_ENV = "PYBPFMAP_READY_FD"
_PR_SET_PDEATHSIG = 1  # include/uapi/linux/prctl.h


class StuckProcess(RuntimeError):
    """A process group still had live members ``KILL_WAIT`` s after SIGKILL
    (a task in uninterruptible sleep: stuck in the kernel)."""


class NotReady(RuntimeError):
    """A child did not say it was ready (it exited, or the time ran out)."""


def wait_until(predicate: Callable[[], T], timeout: float, step: float = 0.1,
               pause: Callable[[float], object] = time.sleep) -> T:
    """Call ``predicate`` until it returns something true or ``timeout``
    seconds have passed; its last result (false on timeout).  It is always
    called once more at the deadline, so a slow machine gets a last look.
    Between calls it waits ``pause(step)`` (at most until the deadline): by
    default a sleep; a ``threading.Condition``'s wait ends early on a notify."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result or time.monotonic() >= deadline:
            return result
        pause(min(step, max(0.0, deadline - time.monotonic())))


def live_members(pgid: int) -> list[int]:
    """The processes of group ``pgid`` that have not exited (a zombie has),
    read from ``/proc/PID/stat``."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(entry.name))
    return out


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to group ``pgid``; False if no process is in it any more."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # only zombies left, or not ours: nothing to signal
        return False
    return True


# Looked up here, in the parent: a child forked by a process with threads
# must not dlopen() (another thread may have held the loader's lock at fork).
_prctl = ctypes.CDLL(None, use_errno=True).prctl


def child_setup(sigint: Any = signal.SIG_DFL) -> None:
    """In a new child, before it runs anything of its own: die with the
    parent (``PR_SET_PDEATHSIG``) and take ``sigint`` as SIGINT's disposition
    (the default, unless the parent handles Ctrl-C for it)."""
    signal.signal(signal.SIGINT, sigint)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


# --- the guard --------------------------------------------------------------

_GUARD_CODE = """\
import os, signal, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
groups = set()
for line in sys.stdin:
    op, _, pgid = line.partition(" ")
    (groups.add if op == "+" else groups.discard)(int(pgid))
for pgid in groups:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass
"""


class _Guard:
    """The process that kills this process's registered groups once it is
    gone.  Started on first use; a forked child closes its copy of the pipe
    (``os.register_at_fork``), or the guard would wait for that child too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._owner = 0

    def _pipe(self):
        if self._proc is None or self._owner != os.getpid():
            self._proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _GUARD_CODE], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                start_new_session=True)
            self._owner = os.getpid()
        return self._proc.stdin

    def tell(self, op: str, pgid: int) -> None:
        with self._lock:
            if op == "-" and (self._proc is None or self._owner != os.getpid()):
                return
            pipe = self._pipe()
            with contextlib.suppress(OSError, ValueError):
                pipe.write(f"{op} {pgid}\n")
                pipe.flush()

    def close(self) -> None:
        """At exit: close the pipe (the guard then kills whatever is still
        registered) and reap the guard."""
        with self._lock:
            if self._proc is None or self._owner != os.getpid():
                return
            with contextlib.suppress(OSError, ValueError):
                self._proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None

    def forget_in_child(self) -> None:
        """After fork(), in the child: this guard is the parent's."""
        self._lock = threading.Lock()  # another thread may have held it at fork
        if self._proc is not None and self._proc.stdin is not None:
            # /dev/null over the pipe's number: the pipe is released here, and the
            # number stays taken until the file object's finalizer closes it, so
            # that close can never hit a file this child opens meanwhile.
            with contextlib.suppress(OSError, ValueError):
                null = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
                os.dup2(null, self._proc.stdin.fileno(), inheritable=False)
                os.close(null)
        self._proc = None


_guard = _Guard()
os.register_at_fork(after_in_child=_guard.forget_in_child)
atexit.register(_guard.close)


# --- a process group ---------------------------------------------------------

class Group:
    """A process group pybpfmap owns, led by ``pid`` (its pgid).

    ``reap`` collects the leader's exit status (the leader is our child: its
    zombie keeps the pgid from being reused until then)."""

    def __init__(self, pid: int, reap: Callable[[float | None], int | None]):
        self.pgid = pid
        self._reap = reap
        self.returncode: int | None = None
        _guard.tell("+", pid)

    def alive(self) -> list[int]:
        """The members of the group that have not exited."""
        return live_members(self.pgid)

    def wait(self, timeout: float | None = None) -> int | None:
        """The leader's exit status, once it has exited (``subprocess.TimeoutExpired``
        past ``timeout``); the rest of the group may still run (:meth:`kill`)."""
        self.returncode = self._reap(timeout)
        return self.returncode

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to every member; False if none is left."""
        return signal_group(self.pgid, sig)

    def kill(self, wait: float = KILL_WAIT) -> int | None:
        """SIGKILL the whole group and wait until no member is alive; the
        leader's exit status.  :class:`StuckProcess` if members outlive ``wait``."""
        self.signal(signal.SIGCONT)  # a stopped task sees SIGINT only once resumed
        self.signal(signal.SIGKILL)
        alive = wait_until(lambda: not self.alive(), wait, 0.05)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.returncode = self._reap(0 if not alive else max(0.1, wait / 10))
        if not alive:
            left = self.alive()
            raise StuckProcess(f"process group {self.pgid}: {len(left)} process(es) "
                               f"({', '.join(map(str, left))}) alive {wait:g} s after "
                               "SIGKILL (stuck in the kernel?)")
        _guard.tell("-", self.pgid)
        return self.returncode

    def stop(self, grace: float = GRACE, kill_wait: float = KILL_WAIT) -> int | None:
        """Stop the group as Ctrl-C would: SIGINT, up to ``grace`` s for the
        leader to exit, then :meth:`kill` (which also ends whatever the leader
        left behind in its group); the leader's exit status."""
        if self.signal(signal.SIGINT):
            self.signal(signal.SIGCONT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.returncode = self._reap(grace)
        return self.kill(kill_wait)


# --- an exec'd child ------------------------------------------------------------

class Child:
    """``argv`` started in a process group of its own (see the module's
    docstring).  ``popen`` is the :class:`subprocess.Popen`; extra keyword
    arguments go to it (``stdout``, ``env``, ``pass_fds``...; a ``preexec_fn``
    runs after :func:`child_setup`).  With ``ready=True`` the child gets a
    pipe's write end as ``$PYBPFMAP_READY_FD`` and :meth:`wait_ready` waits
    for its line; without, ``$PYBPFMAP_READY_FD`` is removed from its
    environment (it names no fd of the child's: a nested pybpfmap must not
    write to whatever has that number there).  Use it as a context manager:
    on exit the group is killed if it still runs."""

    def __init__(self, argv: Sequence[str], *, ready: bool = False,
                 sigint: Any = signal.SIG_DFL, **popen: Any):
        self.argv = [str(a) for a in argv]
        self._ready_r: int | None = None
        fds = tuple(popen.pop("pass_fds", ()))
        env = popen.pop("env", None)
        env = dict(os.environ if env is None else env)
        env.pop(READY_ENV, None)
        then = popen.pop("preexec_fn", None)
        ready_w = None
        if ready:
            self._ready_r, ready_w = os.pipe()
            env[READY_ENV] = str(ready_w)
            fds += (ready_w,)

        def setup() -> None:
            child_setup(sigint)
            if then is not None:
                then()

        try:
            self.popen = subprocess.Popen(self.argv, env=env, pass_fds=fds,
                                          start_new_session=True, preexec_fn=setup, **popen)
        except BaseException:
            if self._ready_r is not None:
                os.close(self._ready_r)
            raise
        finally:
            if ready_w is not None:
                os.close(ready_w)
        self.pid = self.popen.pid
        self.group = Group(self.pid, self._reap)

    def _reap(self, timeout: float | None) -> int | None:
        return self.popen.wait(timeout)

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def poll(self) -> int | None:
        return self.popen.poll()

    def wait(self, timeout: float | None = None) -> int:
        """The leader's exit status (``subprocess.TimeoutExpired`` past ``timeout``)."""
        return self.popen.wait(timeout)

    def wait_ready(self, timeout: float) -> str:
        """The line the child wrote to its ready fd.  :class:`NotReady` if it
        closed the fd (or exited) first, or ``timeout`` passed."""
        if self._ready_r is None:
            raise ValueError("started without ready=True")
        import select

        buf = b""
        deadline = time.monotonic() + timeout
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ready_r], [], [], left)[0]:
                raise NotReady(f"{os.path.basename(self.argv[0])} did not say it was "
                               f"ready within {timeout:g} s")
            chunk = os.read(self._ready_r, 512)
            if not chunk:
                raise NotReady(f"{os.path.basename(self.argv[0])} closed its ready fd "
                               f"without a line (exit status {self.popen.poll()})")
            buf += chunk
        return buf.decode(errors="replace").strip()

    def stop(self, grace: float = GRACE, kill_wait: float = KILL_WAIT) -> int | None:
        """SIGINT, ``grace`` s, SIGKILL the group, wait until none is alive."""
        return self.group.stop(grace, kill_wait)

    def kill(self, wait: float = KILL_WAIT) -> int | None:
        """SIGKILL the group at once and wait until none is alive."""
        return self.group.kill(wait)

    def close(self) -> None:
        """Kill what is left of the group and release the ready pipe."""
        try:
            self.group.kill()
        finally:
            if self._ready_r is not None:
                with contextlib.suppress(OSError):
                    os.close(self._ready_r)
                self._ready_r = None

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Finished:
    """What :func:`capture` got: the output, and the exit status (``stdout``
    None: still running at the timeout, then killed)."""

    stdout: str | None
    stderr: str | None
    returncode: int | None

    @property
    def timed_out(self) -> bool:
        return self.stdout is None


def capture(argv: Sequence[str], timeout: float, kill_wait: float = KILL_WAIT,
            **popen: Any) -> Finished:
    """``argv`` as a :class:`Child`, its stdout and stderr read as text until
    it exits or ``timeout`` passes; then whatever is left of its group is
    killed and waited for until none is alive (EOF on its pipes comes before
    that).  :class:`StuckProcess` if the group outlives SIGKILL, saying
    whether the leader had exited or was still running at the timeout."""
    child = Child(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                  encoding="utf-8", errors="replace", **popen)
    stdout = stderr = None
    try:
        stdout, stderr = child.popen.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        late = f"still running after {timeout:g} s" if stdout is None else "exited"
        try:
            child.kill(kill_wait)  # a run past its time, or what it left in its group
        except StuckProcess as e:  # e says "... alive N s after SIGKILL (stuck ...)"
            raise StuckProcess(f"{late}; {e}") from None
        finally:
            child.popen.stdout.close()
            child.popen.stderr.close()
    return Finished(stdout, stderr, child.returncode)


def _waitpid(pid: int) -> Callable[[float | None], int | None]:
    """A ``reap`` for a child of ``os.fork()``: its exit status by ``waitpid``
    (``subprocess.TimeoutExpired`` past the timeout; None if someone else
    reaped it)."""
    status: list[int | None] = []

    def done(flags: int) -> bool:
        try:
            got, st = os.waitpid(pid, flags)
        except ChildProcessError:
            status.append(None)
            return True
        if got == pid:
            status.append(os.waitstatus_to_exitcode(st))
        return bool(status)

    def reap(timeout: float | None) -> int | None:
        if not status:
            if timeout is None:
                done(0)
            elif not wait_until(lambda: done(os.WNOHANG), timeout, 0.01):
                raise subprocess.TimeoutExpired(str(pid), timeout)
        return status[0]

    return reap


def adopt(pid: int, reap: Callable[[float | None], int | None] | None = None) -> Group:
    """Own a child forked another way (``multiprocessing``, ``os.fork``): make
    it lead its own group (the parent's half of the setpgid race; the child
    calls ``os.setpgid(0, 0)`` too) and register the group with the guard.
    ``reap(timeout)`` collects the child's exit status (``Process.join``);
    without one, ``os.waitpid`` does (a child of ``os.fork()``)."""
    with contextlib.suppress(OSError):  # EACCES once it has exec'd: then it did it itself
        os.setpgid(pid, pid)
    return Group(pid, reap or _waitpid(pid))


def tell_ready(text: str = "ready") -> bool:
    """In a child started with ``ready=True``: say so, once.  False when no
    one asked (no ``$PYBPFMAP_READY_FD``)."""
    fd = os.environ.pop(READY_ENV, None)
    if fd is None:
        return False
    try:
        if not stat.S_ISFIFO(os.fstat(int(fd)).st_mode):
            return False  # not a pipe of ours (inherited by a process it was not for)
        os.write(int(fd), (text + "\n").encode())
        os.close(int(fd))
    except (OSError, ValueError):
        return False
    return True
