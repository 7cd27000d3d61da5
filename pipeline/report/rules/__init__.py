"""Every verdict rule of the report, one module per paper named as its figure module
(``massive_activations``, ``super_weight``, ``training``, ``birth``) plus ``unjudged``.

Importing this package imports every module in it, so a rule module cannot be forgotten:
:data:`RULES` (name -> rule) is complete once this import returns.
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.report.registry import RULES, VERDICTS, Rule

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["RULES", "VERDICTS", "Rule"]
