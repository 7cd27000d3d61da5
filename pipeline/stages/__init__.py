"""One leaf module per stage. Importing this package imports (and so registers) every module in
it, found by listing the package: a new stage file cannot be missed."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
