"""Prompts in routing rules: ``KIND=VALUE`` text mapped onto ``medseg segment``'s parsers.

A rule stores its prompts as text (``box=10,10,40,40@2-5``, ``point-mm=-12,30,-100:neg``)
so the job record stays plain JSON; the text is parsed once at config load (a typo stops the
service before it listens) and again by the worker when it builds the pipeline options.
"""

from __future__ import annotations

from medseg.errors import PromptError
from medseg.prompts import Prompt, parse_box, parse_point

KINDS = ("box", "box-mm", "point", "point-mm")


def parse_rule_prompt(text: str) -> Prompt:
    """``box=...``, ``box-mm=...``, ``point=...`` or ``point-mm=...`` -> a pipeline prompt.

    The value uses the syntax of the ``medseg segment`` option of the same name.
    """
    kind, sep, value = text.partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise PromptError(f"bad prompt {text!r}: expected KIND=VALUE with KIND one of {KINDS}")
    if kind.startswith("box"):
        return parse_box(value, "mm" if kind == "box-mm" else "index")
    return parse_point(value, "mm" if kind == "point-mm" else "index")


def parse_rule_prompts(texts: tuple[str, ...]) -> tuple[Prompt, ...]:
    """All of a job's prompts, in order."""
    return tuple(parse_rule_prompt(text) for text in texts)
