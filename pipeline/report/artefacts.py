"""The report's artefacts, read from ``conf/report/artefacts.yaml`` (data, like lm-eval's task
files): per artefact, in the papers' order, the experiment and results folder, the table shown
(our numbers), the published entries put beside it (``conf/paper/``, each tagged verified or
recalled), the verdict rule (by name, validated against :mod:`pipeline.report.rules`), the command
that regenerates it and the hardware it needs. One without a rule is "not judged", said so, never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import OmegaConf

from pipeline.core.errors import PipelineError
from pipeline.core.paths import CONF_DIR
from pipeline.report.rules import RULES


@dataclass(frozen=True)
class Artefact:
    experiment: str                      # conf/experiment/<name>.yaml
    paper: str                           # A | B | C | beyond
    title: str
    table: str | None = None             # the CSV shown (our numbers)
    columns: tuple[str, ...] = ()        # () = every non-provenance column
    rule: str = "no_rule_yet"
    published: tuple[tuple[str, str], ...] = ()   # (paper file, entry key) shown for every paper model
    command: str = ""
    hardware: str = "2-core CPU"
    folder: str | None = None            # results folder when it is not the experiment's own
    also_needs: tuple[str, ...] = field(default_factory=tuple)   # more tables the rule reads


def load_artefacts(path=CONF_DIR / "report" / "artefacts.yaml") -> tuple[Artefact, ...]:
    """The artefact list; an unknown rule or a malformed entry fails in one line."""
    out = []
    for entry in OmegaConf.to_container(OmegaConf.load(path), resolve=True)["artefacts"]:
        entry = dict(entry)
        for key in ("columns", "also_needs"):
            entry[key] = tuple(entry.get(key) or ())
        entry["published"] = tuple(tuple(p) for p in entry.get("published") or ())
        try:
            a = Artefact(**entry)
        except TypeError as err:
            raise PipelineError(f"{path.name}: entry {entry.get('experiment')!r}: {err}") from err
        if a.rule not in RULES:
            raise PipelineError(f"{path.name}: {a.experiment}: unknown rule {a.rule!r}; known: {', '.join(sorted(RULES))}")
        out.append(a)
    return tuple(out)


ARTEFACTS: tuple[Artefact, ...] = load_artefacts()
