"""The emulated content filter: a trigger word in the prompt trips it, so apps can rehearse
Azure's two outcomes (docs/demo.md): the prompt refused with 400 ``content_filter``, or the
answer cut short with ``finish_reason: "content_filter"``."""

from __future__ import annotations

from typing import Any

FILTER_PROMPT = "emulator:filter-prompt"
FILTER_ANSWER = "emulator:filter-answer"
_CATEGORIES = ("hate", "self_harm", "sexual", "violence")
# The category the emulator's filter "finds": the one Azure's own examples show most.
_FOUND = "violence"


def results(filtered: bool = False, prompt: bool = False) -> dict[str, Any]:
    """Per-category verdicts, as Azure attaches them to prompts, answers and errors."""
    out: dict[str, Any] = {name: {"filtered": False, "severity": "safe"} for name in _CATEGORIES}
    if filtered:
        out[_FOUND] = {"filtered": True, "severity": "medium"}
    if prompt:
        out["jailbreak"] = {"filtered": False, "detected": False}
    return out


def prompt_tripped(prompt: str) -> bool:
    return FILTER_PROMPT in prompt


def answer_tripped(prompt: str) -> bool:
    return FILTER_ANSWER in prompt
