"""The Magistral format check (SPEC.md §2.1): think tags, then a boxed answer or a code block."""

from __future__ import annotations

import dataclasses
import re

FENCE = re.compile(r"```([A-Za-z][\w+#.-]*)[ \t]*\n(.*?)```", re.S)


@dataclasses.dataclass(frozen=True)
class FormatResult:
    ok: bool
    reason: str = ""  # why it failed
    thinking: str = ""
    answer: str = ""  # everything after </think>


def check_format(kind: str, response: str) -> FormatResult:
    """Starts with <think>; exactly one <think> and one </think>, in order; then for math a
    \\boxed{} answer, for code a fenced block whose opening fence names a language."""
    text = response.lstrip()
    if not text.startswith("<think>"):
        return FormatResult(False, "does not start with <think>")
    if text.count("<think>") != 1 or text.count("</think>") != 1:
        return FormatResult(False, f"{text.count('<think>')} <think> and {text.count('</think>')} </think> tags (need one each)")
    thinking, answer = text[len("<think>"):].split("</think>", 1)
    if kind == "math":
        # The pattern math.last_boxed extracts: only \boxed is an answer (\fbox is not, in either place).
        if not re.search(r"\\boxed\s*\{", answer):
            return FormatResult(False, "no \\boxed{} answer after </think>")
    elif kind == "code":
        if not FENCE.search(answer):
            return FormatResult(False, "no fenced code block naming its language after </think>")
    else:
        raise ValueError(f"unknown problem kind {kind!r}")
    return FormatResult(True, "", thinking, answer)


def first_code_block(answer: str) -> tuple[str, str] | None:
    """(language, code) of the first fenced block, or None."""
    m = FENCE.search(answer)
    return (m.group(1).lower(), m.group(2)) if m else None


LANGUAGE_ALIASES = {"python": "python", "py": "python", "python3": "python", "cpp": "cpp", "c++": "cpp",
                    "cxx": "cpp", "cc": "cpp"}
