"""Wire format: a msgpack header plus one raw frame per array.

A message is a list of ZeroMQ frames: ``[header, buf0, buf1, ...]``. The header is a msgpack map
``{"v", "r" (run id), "s" (source rank), "d" (destination rank), "k" (kind), "p" (payload)}``; inside the
payload every numpy array or torch tensor is replaced by a msgpack extension that names its frame, dtype
and shape, and its bytes travel as their own frame; on receipt they are zero-copy views over the frame
memory. Arrays of at most INLINE_MAX bytes ride inside the header instead (dtype, shape and bytes in
the extension): every extra frame costs ZeroMQ more than copying a few kilobytes. Nothing is pickled.
"""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

VERSION = 1
_EXT_ARRAY = 1
_EXT_INLINE = 2
INLINE_MAX = 16 * 1024
_NUMPY, _TORCH = 0, 1
ALLOWED_DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64", "bfloat16"}
)


_dtype_names: dict[np.dtype, str] = {}
_NP_DTYPES = {name: np.dtype("int16" if name == "bfloat16" else name) for name in ALLOWED_DTYPES}


class WireError(ValueError):
    """A frame that cannot be decoded: garbled, inconsistent, or not ours."""


@dataclass(frozen=True)
class Header:
    run: str
    src: int
    dst: int
    kind: str


def _torch():
    """torch only if the program already imported it: plain gossip never pays for the import."""
    return sys.modules.get("torch")


def _array_of(obj: Any) -> tuple[np.ndarray, str, int] | None:
    """Return (contiguous array, dtype name, origin) when obj is an array or tensor, else None."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        return arr, _dtype_name(arr.dtype), _NUMPY
    torch = _torch()
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy(), "bfloat16", _TORCH
        arr = t.numpy()
        return arr, _dtype_name(arr.dtype), _TORCH
    return None


def _dtype_name(dtype: np.dtype) -> str:
    """dtype.name is a slow property; message encoding asks for it once per array."""
    name = _dtype_names.get(dtype)
    if name is None:
        name = _dtype_names[dtype] = dtype.name
    return name


class _Encoder(threading.local):
    """One msgpack Packer per thread, reused: building a Packer costs more than packing a small header."""

    def __init__(self) -> None:
        self.buffers: list = []
        self.packer = msgpack.Packer(default=self.default, use_bin_type=True)
        self.descriptors = msgpack.Packer(use_bin_type=True)

    def default(self, obj: Any) -> Any:
        found = _array_of(obj)
        if found is not None:
            arr, dtype, origin = found
            if dtype not in ALLOWED_DTYPES:
                raise TypeError(f"dtype {dtype} cannot be sent")
            if arr.nbytes <= INLINE_MAX:
                meta = self.descriptors.pack([dtype, list(arr.shape), origin, arr.tobytes()])
                return msgpack.ExtType(_EXT_INLINE, meta)
            self.buffers.append(memoryview(arr).cast("B") if arr.size else b"")
            meta = self.descriptors.pack([len(self.buffers) - 1, dtype, list(arr.shape), origin])
            return msgpack.ExtType(_EXT_ARRAY, meta)
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, tuple | set | frozenset):
            return list(obj)
        raise TypeError(f"cannot send an object of type {type(obj).__name__}")


_encoder = _Encoder()


def encode(run: str, src: int, dst: int, kind: str, payload: Any) -> list:
    """Encode one message into frames; arrays become separate frames without an extra copy."""
    enc = _encoder
    enc.buffers = buffers = []
    try:
        header = enc.packer.pack({"v": VERSION, "r": run, "s": src, "d": dst, "k": kind, "p": payload})
    except BaseException:
        enc.packer.reset()  # a failed pack leaves partial bytes behind
        raise
    finally:
        enc.buffers = []
    return [header, *buffers]


def decode(frame: bytes | memoryview, buffers: list) -> tuple[Header, Any]:
    """Decode a message in one pass: routing fields, and a payload whose arrays are views of the frames."""
    used: set[int] = set()
    try:
        obj = msgpack.unpackb(frame, raw=False, strict_map_key=False,
                              ext_hook=lambda code, data: _rebuild(code, data, buffers, used))
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage
        raise WireError(f"undecodable header ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise WireError("not a dsim header")
    try:
        header = Header(str(obj["r"]), int(obj["s"]), int(obj["d"]), str(obj["k"]))
    except (KeyError, TypeError, ValueError):
        raise WireError("header misses routing fields") from None
    if len(used) != len(buffers):
        raise WireError(f"{len(buffers)} buffer frames but {len(used)} referenced")
    return header, obj.get("p")


def _rebuild(code: int, data: bytes, buffers: list, used: set[int]) -> Any:
    try:
        if code == _EXT_ARRAY:
            index, dtype, shape, origin = msgpack.unpackb(data, raw=False)
            index = int(index)
        elif code == _EXT_INLINE:
            dtype, shape, origin, buf = msgpack.unpackb(data, raw=False)
            index = -1
        else:
            raise WireError(f"unknown extension type {code}")
        shape = tuple(int(s) for s in shape)
    except WireError:
        raise
    except Exception:
        raise WireError("bad array descriptor") from None
    if dtype not in ALLOWED_DTYPES or any(s < 0 for s in shape):
        raise WireError("bad array descriptor")
    if index >= 0:
        if not 0 <= index < len(buffers) or index in used:
            raise WireError("bad array descriptor")
        used.add(index)
        buf = buffers[index]
    elif not isinstance(buf, bytes):
        raise WireError("bad inline array")
    np_dtype = _NP_DTYPES[dtype]
    count = math.prod(shape)
    if count * np_dtype.itemsize != len(buf):
        raise WireError(f"array of shape {shape} and dtype {dtype} does not match its {len(buf)}-byte frame")
    arr = np.frombuffer(buf, dtype=np_dtype, count=count).reshape(shape)
    if origin != _TORCH:
        return arr
    torch = _torch()
    if torch is None:
        import torch  # a tensor arrived: the receiving program works with torch
    import warnings

    with warnings.catch_warnings():
        # The frame is ours alone, so writing through the tensor is safe; torch warns about any read-only view.
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(arr)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def frames_size(frames: list) -> int:
    """Bytes on the wire for a message, as counted by both ends."""
    return sum(len(f) if not isinstance(f, memoryview) else f.nbytes for f in frames)

