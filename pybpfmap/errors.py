"""One exception type for everything pybpfmap reports to a user.

An error carries the parameter it is about, the kernel's errno (if any) and
what that errno means in this situation.  It becomes a one-line message and an
exit status only at the CLI boundary (:func:`pybpfmap.cli.main`).
"""

from __future__ import annotations

import errno as _errno
import os

# Kernel-internal errnos that leak to user space but that Python's errno
# module does not know (include/linux/errno.h).
ENOTSUPP = 524
KERNEL_ERRNOS: dict[int, tuple[str, str]] = {
    512: ("ERESTARTSYS", "Restart system call"),
    ENOTSUPP: ("ENOTSUPP", "Operation is not supported (kernel-internal ENOTSUPP)"),
}

EXIT_KERNEL = 1
EXIT_USAGE = 2


# Where Python's errno.errorcode picks an alias, the name the kernel's own
# sources use (include/uapi/asm-generic/errno.h: EDEADLOCK is EDEADLK).
PREFERRED_NAMES = {_errno.EDEADLK: "EDEADLK", _errno.EOPNOTSUPP: "EOPNOTSUPP"}


def errno_name(err: int) -> str:
    """``errno_name(7) == 'E2BIG'``; knows the kernel-only ones like ENOTSUPP (524)."""
    if err in KERNEL_ERRNOS:
        return KERNEL_ERRNOS[err][0]
    return PREFERRED_NAMES.get(err) or _errno.errorcode.get(err, f"errno {err}")


def errno_by_name(name: str) -> int | None:
    """The inverse of :func:`errno_name` (``"E2BIG"`` -> 7, ``"errno 600"`` -> 600);
    None for a name no errno has."""
    if name.startswith("errno ") and name[6:].isdigit():
        return int(name[6:])
    return next((n for n in (*_errno.errorcode, *KERNEL_ERRNOS) if errno_name(n) == name), None)


def errno_text(err: int) -> str:
    """strerror() that also knows the kernel-only errnos."""
    if err in KERNEL_ERRNOS:
        return KERNEL_ERRNOS[err][1]
    return os.strerror(err)


class PybpfmapError(Exception):
    """A failure explained for the user.

    ``param`` names the parameter or object concerned (a library names the
    field, ``max_entries``; the CLI shows the command's option for it,
    ``--max-entries``: :meth:`as_option`), ``err`` is the errno
    the kernel returned (None for usage errors), ``meaning`` says what it means
    here.  ``exit_code`` is 2 for usage errors and 1 for kernel refusals.
    """

    def __init__(self, param: str, meaning: str, err: int | None = None,
                 exit_code: int | None = None):
        self.param = param
        self.err = err
        self.meaning = meaning
        if exit_code is None:
            exit_code = EXIT_USAGE if err is None else EXIT_KERNEL
        self.exit_code = exit_code
        super().__init__(self.message())

    def message(self) -> str:
        if self.err is None:
            return f"{self.param}: {self.meaning}"
        return (f"{self.param}: {errno_name(self.err)} ({self.err}, "
                f"{errno_text(self.err)}): {self.meaning}")

    def as_option(self, options: set[str]) -> PybpfmapError:
        """This error with each field in ``param`` named by its command-line
        option when the command has one (``max_entries`` -> ``--max-entries``;
        ``prealloc`` -> ``--no-prealloc``)."""
        def option(field: str) -> str:
            for flag in (f"--{field.replace('_', '-')}", f"--no-{field.replace('_', '-')}",
                         f"--{field.replace('_', '-')}s"):
                if flag in options:
                    return flag
            return field

        self.param = "/".join(option(f) for f in self.param.split("/"))
        return self


class UsageError(PybpfmapError):
    """Bad command-line input, caught before the kernel is asked anything;
    ``err`` is the errno when trying the input showed it (an output path that
    cannot be written: ENOTDIR, EACCES...)."""

    def __init__(self, param: str, meaning: str, err: int | None = None):
        super().__init__(param, meaning, err, EXIT_USAGE)


class KernelError(PybpfmapError):
    """The kernel refused something; ``err`` is its errno."""

    def __init__(self, param: str, err: int, meaning: str):
        super().__init__(param, meaning, err, EXIT_KERNEL)


class EnvironmentProblem(PybpfmapError):
    """The machine lacks something pybpfmap needs (headers, tracefs, root...)."""

    def __init__(self, param: str, meaning: str, err: int | None = None):
        super().__init__(param, meaning, err, EXIT_KERNEL)
