"""Routing: which rule (model, window, threshold, destinations) a complete series gets.

Rules are tried in configuration order and the first that matches wins; a series that no
rule matches is kept for the retention period and not processed. Only image series (CT/MR
storage classes) are ever routed: SEG, presentation states and SR are kept, never processed,
whatever the rules say (a rule with no modalities means "any image", not "anything").
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from medseg.server.completion import SeriesInfo
from medseg.server.config import RuleConfig


def rule_matches(rule: RuleConfig, series: SeriesInfo, slices: int) -> bool:
    """Whether ``series`` with ``slices`` stored instances falls under ``rule``.

    Modality and body part compare case-insensitively; ``series_description`` is a regular
    expression searched in the SeriesDescription (case-insensitive).
    """
    if rule.modalities and series.modality.upper() not in {m.upper() for m in rule.modalities}:
        return False
    if rule.body_parts and series.body_part.upper() not in {b.upper() for b in rule.body_parts}:
        return False
    if rule.series_description and not re.search(
        rule.series_description, series.description, flags=re.IGNORECASE
    ):
        return False
    return slices >= rule.min_slices


def route(rules: Sequence[RuleConfig], series: SeriesInfo, slices: int) -> RuleConfig | None:
    """The first rule matching ``series``, or None when it is not to be processed."""
    if not series.is_image:
        return None
    return next((rule for rule in rules if rule_matches(rule, series, slices)), None)
