"""dsim's compiled ZeroMQ calls (dsim/_zmqio.c), bound to the libzmq that pyzmq loaded.

The module is built at install when a C compiler is at hand (setup.py, optional): without one dsim runs
the same hot path through pyzmq alone. It links no libzmq of its own: the functions it calls are looked
up in the very library pyzmq's backend loaded (found in this process's memory map), so that sockets
pyzmq made are driven by the code that owns them. Where that library cannot be found for certain
(not Linux, or two libzmq copies mapped), the module is not used.
"""

from __future__ import annotations

import ctypes
import os
from types import ModuleType

import zmq

from dsim.errors import DsimError

_FUNCTIONS = ("zmq_msg_init", "zmq_msg_init_size", "zmq_msg_recv", "zmq_msg_send", "zmq_msg_data",
              "zmq_msg_size", "zmq_msg_more", "zmq_msg_close", "zmq_errno")
_loaded: tuple[ModuleType | None, str] | None = None


def load() -> tuple[ModuleType | None, str]:
    """(the bound module, "") or (None, why it cannot be used); found once per process."""
    global _loaded
    if _loaded is None:
        _loaded = _bind()
    return _loaded


def chosen(choice: str) -> ModuleType | None:
    """The module for a run's net.native_io: None for "off", or for "auto" where it cannot be used."""
    if choice == "off":
        return None
    module, why = load()
    if module is None and choice == "on":
        raise DsimError(f"net.native_io = 'on' but {why}")
    return module


def _bind() -> tuple[ModuleType | None, str]:
    try:
        from dsim import _zmqio
    except ImportError:
        return None, "dsim's compiled module was not built at install (no C compiler?)"
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = {line.split(maxsplit=5)[-1].strip() for line in maps if "libzmq" in line}
    except OSError:
        return None, "this system does not show which libzmq pyzmq loaded (/proc/self/maps)"
    paths = {p for p in paths if os.path.basename(p).startswith("libzmq")}
    if len(paths) != 1:
        return None, f"pyzmq's libzmq not found for certain among the mapped libraries ({len(paths)} candidates)"
    try:
        lib = ctypes.CDLL(paths.pop())  # already loaded: dlopen hands back the same library
    except OSError as exc:  # e.g. the file was replaced since it was mapped ("(deleted)")
        return None, f"pyzmq's libzmq cannot be opened again ({exc})"
    version = [ctypes.c_int() for _ in range(3)]
    lib.zmq_version(*(ctypes.byref(v) for v in version))
    if tuple(v.value for v in version) != zmq.zmq_version_info() or zmq.zmq_version_info() < (4, 1):
        return None, "the mapped libzmq is not the version pyzmq reports"
    _zmqio.bind(tuple(ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in _FUNCTIONS),
                zmq.ZMQError)
    return _zmqio, ""
