"""Read a pytest junit XML file: counts, and the cases that failed or skipped.

One reader for every place that brings a guest's test results back (``pybpfmap
vm test`` and the Vagrant check)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from pybpfmap.errors import EnvironmentProblem


@dataclass(frozen=True)
class Case:
    """One test case that did not simply pass."""

    name: str        # classname::name, as pytest's node id reads
    kind: str        # "failure", "error" or "skipped"
    message: str


@dataclass
class Junit:
    """What one junit file says."""

    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    cases: list[Case] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return self.tests - self.failures - self.errors - self.skipped

    @property
    def ok(self) -> bool:
        """Nothing failed, and at least one test ran."""
        return self.failures == self.errors == 0 and self.passed > 0

    def skipped_because(self, *words: str) -> list[Case]:
        """The skipped cases whose reason contains any of ``words``."""
        return [c for c in self.cases
                if c.kind == "skipped" and any(w in c.message for w in words)]

    def counts(self) -> str:
        """``12 passed, 1 failed, 3 skipped`` (pytest's words; zero counts left out,
        except passed)."""
        parts = [f"{self.passed} passed"]
        parts += [f"{n} {word}" for n, word in ((self.failures, "failed"),
                                                (self.errors, "errors"),
                                                (self.skipped, "skipped")) if n]
        return ", ".join(parts)

    def to_json(self) -> dict:
        return {"tests": self.tests, "passed": self.passed, "failures": self.failures,
                "errors": self.errors, "skipped": self.skipped, "seconds": self.seconds,
                "cases": [c.__dict__ for c in self.cases]}


def parse(text: str) -> Junit:
    """A junit document's counts (every ``testsuite`` summed) and non-passing cases."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"not junit XML: {e}") from None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    out = Junit()
    for suite in suites:
        out.tests += int(suite.get("tests", 0))
        out.failures += int(suite.get("failures", 0))
        out.errors += int(suite.get("errors", 0))
        out.skipped += int(suite.get("skipped", 0))
        out.seconds += float(suite.get("time", 0) or 0)
        for case in suite.iter("testcase"):
            for kind in ("failure", "error", "skipped"):
                for el in case.iter(kind):
                    name = "::".join(x for x in (case.get("classname"), case.get("name")) if x)
                    out.cases.append(Case(name, kind, (el.get("message") or "").strip()))
    return out


def read(path: Path | str) -> Junit:
    """:func:`parse` of the file at ``path``; EnvironmentProblem naming it if
    it is missing or not junit."""
    try:
        return parse(Path(path).read_text(errors="replace"))
    except OSError as e:
        raise EnvironmentProblem(str(path), "no junit results", e.errno) from None
    except ValueError as e:
        raise EnvironmentProblem(str(path), str(e)) from None

