"""`foundry-proxy check`'s report: the steps, each ok, failed or with a warning, and how they
are shown to a person (the JSON form is the same steps, as data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


@dataclass
class Step:
    name: str
    status: str  # "ok", "fail" or "warn"
    summary: str
    cause: str = ""
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status in ("ok", "warn") for s in self.steps) and bool(self.steps)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step


_MARKS = MappingProxyType({"ok": "[ ok ]", "fail": "[FAIL]", "warn": "[warn]"})


def render(report: Report) -> str:
    lines = []
    for step in report.steps:
        lines.append(f"{_MARKS[step.status]} {step.name}: {step.summary}")
        if "\n" in step.cause or step.cause.startswith("  - "):
            # A list of problems, in the server's format (errors.problem_list).
            lines.append("       cause:")
            lines += [f"       {line}" for line in step.cause.splitlines()]
        elif step.cause:
            lines.append(f"       cause: {step.cause}")
        if step.fix:
            lines.append(f"       fix:   {step.fix}")
    lines.append("")
    lines.append(
        "All good: the proxy can authenticate and reach the upstream."
        if report.ok
        else "Not ready: fix the first failing step and run foundry-proxy check again."
    )
    return "\n".join(lines)
