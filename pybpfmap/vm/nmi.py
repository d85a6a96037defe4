"""NMIs into the guest on its request: QMP ``inject-nmi`` at a rate.

The guest's command asks with ``nmi <rate>`` on the control port
(:func:`pybpfmap.guest.request_nmis`; 0 stops); the runner hands the rate to
:class:`NmiInjector`, a thread with its own QMP monitor (qemu's second one,
``nmi.sock``: the watchdog's monitor stays free for the evidence of a hang).
On x86 ``inject-nmi`` delivers an NMI to every vCPU's local APIC, so under
single-threaded TCG too it lands wherever each vCPU is, lock holders included.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

CONNECT_TIMEOUT = 5.0


class NmiInjector:
    """Sends ``inject-nmi`` to one qemu at the rate last asked (0: none);
    :meth:`close` stops it.  ``sent`` counts the NMIs qemu accepted,
    ``problem`` says why it stopped early (None while it is fine)."""

    def __init__(self, sock: Path):
        self.sock = sock
        self.sent = 0
        self.problem: str | None = None
        self._rate = 0.0
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def set_rate(self, rate: float) -> None:
        with self._wake:
            self._rate = max(0.0, rate)
            self._wake.notify()
        if rate > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="nmi-injector",
                                            daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=CONNECT_TIMEOUT + 1)

    def _loop(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(CONNECT_TIMEOUT)
                s.connect(str(self.sock))
                f = s.makefile("rwb")
                _reply(f)                                   # the greeting
                _call(f, {"execute": "qmp_capabilities"})
                self._inject(f)
        except (OSError, ValueError, QmpError) as e:
            self.problem = f"NMI injection stopped after {self.sent} NMIs: {e}"

    def _inject(self, f) -> None:
        next_at = time.monotonic()
        while True:
            with self._wake:
                while not self._closed and self._rate <= 0:
                    self._wake.wait()
                    next_at = time.monotonic()
                if self._closed:
                    return
                period = 1.0 / self._rate
            _call(f, {"execute": "inject-nmi"})
            self.sent += 1
            next_at += period
            delay = next_at - time.monotonic()
            if delay > 0:
                with self._wake:
                    self._wake.wait(delay)
            elif delay < -1.0:          # fell behind (qemu busy): do not burst to catch up
                next_at = time.monotonic()


class QmpError(Exception):
    """qemu refused a QMP command or closed the monitor."""


def _reply(f) -> dict:
    while True:
        line = f.readline()
        if not line:
            raise QmpError("qemu closed the monitor")
        msg = json.loads(line)
        if "event" not in msg:   # asynchronous events are not answers
            return msg


def _call(f, msg: dict) -> dict:
    f.write(json.dumps(msg).encode() + b"\n")
    f.flush()
    reply = _reply(f)
    if "error" in reply:
        raise QmpError(f"{msg['execute']}: {reply['error'].get('desc')}")
    return reply
