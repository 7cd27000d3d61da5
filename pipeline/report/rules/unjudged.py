"""Rules whose verdict is always "not judged": an artefact without a rule yet, and what goes
beyond the papers (measured, no published claim to judge)."""

from __future__ import annotations

from pipeline.report.registry import rule


@rule("no_rule_yet")
def no_rule_yet(t):
    """no verdict rule is written for this artefact yet: its numbers are shown, unjudged."""
    return "not judged", "no rule yet; numbers shown below"


@rule("measured_only")
def measured_only(t):
    """beyond the papers: no published claim to judge; the numbers are reported as measured."""
    return "not judged", "measured, see the table"
