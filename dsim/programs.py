"""Registry of node programs: `--algorithm NAME` -> the module in dsim.nodes that defines PROGRAM.

Modules are imported only when chosen, so a gossip run never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from dsim.errors import DsimError
from dsim.program import Program

PROGRAMS: dict[str, str] = {
    "gossip": "dsim.nodes.gossip",
    "gather": "dsim.nodes.gather",
    "exchange": "dsim.nodes.exchange",
}


def load_program(name: str) -> Program:
    if name not in PROGRAMS:
        raise DsimError(f"unknown algorithm '{name}' (choose from: {', '.join(sorted(PROGRAMS))})")
    return importlib.import_module(PROGRAMS[name]).PROGRAM


def program_defaults(name: str) -> dict[str, Any]:
    return dict(load_program(name).defaults)
