"""Registry of node programs: `--algorithm NAME` -> the module in dsim.nodes that defines PROGRAM.

Modules are imported only when chosen, so a gossip run never imports torch. A researcher's own
program needs no registration: `--algorithm my_package.my_module` imports that module's PROGRAM
(`my_package.my_module:NAME` picks another attribute).
"""

from __future__ import annotations

import importlib

from dsim.errors import DsimError
from dsim.program import Program

PROGRAMS: dict[str, str] = {
    "gossip": "dsim.nodes.gossip",
    "gather": "dsim.nodes.gather",
    "exchange": "dsim.nodes.exchange",
    "base": "dsim.nodes.collabdm:BASE",
    "localdm": "dsim.nodes.collabdm:LOCALDM",
    "collabdm": "dsim.nodes.collabdm:COLLABDM",
    "mtt": "dsim.nodes.mtt",
    "fedavg": "dsim.nodes.fedavg",
    "dpsgd": "dsim.nodes.dpsgd",
}


def load_program(name: str) -> Program:
    module = PROGRAMS.get(name, name if "." in name else None)
    if module is None:
        raise DsimError(f"unknown algorithm '{name}' (choose from: {', '.join(sorted(PROGRAMS))}, "
                        f"or a module path defining PROGRAM)")
    module, _, attr = module.partition(":")
    try:
        program = getattr(importlib.import_module(module), attr or "PROGRAM")
    except ModuleNotFoundError as exc:
        raise DsimError(f"cannot import node program module '{module}': {exc}") from None
    except AttributeError:
        raise DsimError(f"module '{module}' defines no {attr or 'PROGRAM'}") from None
    if not isinstance(program, Program):
        raise DsimError(f"{module}.PROGRAM is not a dsim.program.Program")
    return program
