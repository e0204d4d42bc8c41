"""Deferred imports, so a program's options can be checked without paying for torch.

`dsim launch` imports the chosen program module to read its option table, and must refuse a bad value
in well under a second; torch alone takes 1.5-3 s to import. A program module binds its heavy modules
with `lazy_import` at the top, and they load on first attribute access (in the launcher when it loads
the dataset, or in the node processes).
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType


def lazy_import(name: str) -> ModuleType:
    """The module `name`, loaded on first attribute access (importlib's LazyLoader)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent:  # as the import system does, so `import a.b; a.b.f` works too
        setattr(sys.modules[parent], child, module)
    loader.exec_module(module)
    return module
