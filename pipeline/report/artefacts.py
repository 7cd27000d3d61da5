"""The report's artefacts: one card per experiment, the ``report:`` block of
``conf/experiment/<name>.yaml`` (data, like lm-eval's task files), so that an artefact is one file.
A card names, in the papers' order (``order``), the table shown (our numbers), the published
entries put beside it (``conf/paper/``, each tagged verified or recalled), the verdict rule (by
name, validated against :mod:`pipeline.report.rules`), the command that regenerates it offline,
the arguments of the paper's setting (``paper_args``) and the hardware it needs. One without a rule
is "not judged", said so, never dropped; an experiment without a card fails in one line.
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
    paper_args: str = "setting=paper"    # ARGS of the paper's setting: make repro EXP=... ARGS='<this>'
    hardware: str = "2-core CPU"
    order: int = 0                       # position in the papers' order
    folder: str | None = None            # results folder when it is not the experiment's own
    also_needs: tuple[str, ...] = field(default_factory=tuple)   # more tables the rule reads
    caveat: str = ""                     # what a reader must know to read the verdict (printed under it)


def load_artefacts(folder=CONF_DIR / "experiment") -> tuple[Artefact, ...]:
    """Every experiment's card, in the papers' order; a missing card, an unknown rule or a malformed
    entry fails in one line."""
    out = []
    for path in sorted(folder.glob("*.yaml")):
        card = OmegaConf.load(path).get("report")
        if card is None:
            raise PipelineError(f"{path.name}: no report card (a `report:` block: title, paper, table, rule, ...)")
        entry = {"experiment": path.stem, **OmegaConf.to_container(card, resolve=True)}
        for key in ("columns", "also_needs"):
            entry[key] = tuple(entry.get(key) or ())
        entry["published"] = tuple(tuple(p) for p in entry.get("published") or ())
        try:
            a = Artefact(**entry)
        except TypeError as err:
            raise PipelineError(f"{path.name}: entry {entry.get('experiment')!r}: {err}") from err
        if a.rule not in RULES:
            raise PipelineError(f"{path.name}: {a.experiment}: unknown rule {a.rule!r}; "
                                f"known: {', '.join(sorted(RULES))}")
        out.append(a)
    return tuple(sorted(out, key=lambda a: a.order))


ARTEFACTS: tuple[Artefact, ...] = load_artefacts()
