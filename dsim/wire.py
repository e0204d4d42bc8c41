"""Wire format: a msgpack header plus one raw frame per array.

A message is a list of ZeroMQ frames: ``[header, buf0, buf1, ...]``. The header is a msgpack map
``{"v", "r" (run id), "s" (source rank), "d" (destination rank), "k" (kind), "p" (payload)}``; inside the
payload every numpy array or torch tensor is replaced by a msgpack extension that names its frame, dtype
and shape, and its bytes (little-endian) travel as their own frame; on receipt they are zero-copy views over the frame
memory. Arrays of at most INLINE_MAX bytes ride inside the header instead (dtype, shape and bytes in
the extension): every extra frame costs ZeroMQ more than copying a few kilobytes. Nothing is pickled.

Encoding and decoding sit on every message's path, so their fixed costs are cut, never the format:

- msgpack-python packs and parses the header. Its rules (which payload types it refuses, which map keys
  survive the trip, how deep a payload may nest) are part of the format; msgspec's differ (it would
  accept datetimes, dataclasses and enums, and turn array keys into tuples), so it is not used there.
- Everything before the payload is the same on every message of a route: it is packed once per
  (run, src, dst, kind) and reused. Decoded Headers are reused the same way.
- Array descriptors are our own fixed-shape lists (str, ints, bytes), packed and parsed by msgspec, which
  gives the same bytes as msgpack-python for them and checks their types while parsing. A descriptor in
  any other form (never written by encode) takes the generic parse, which accepts and refuses what the
  format always did.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Annotated, Any

import msgpack
import msgspec
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


# what each name is read as: little-endian, as arrays travel (_little_endian)
_NP_DTYPES = {name: np.dtype("int16" if name == "bfloat16" else name).newbyteorder("<") for name in ALLOWED_DTYPES}
_CACHE_MAX = 4096  # routes remembered (prefixes to send, Headers received); a node has a few per neighbour


class WireError(ValueError):
    """A frame that cannot be decoded: garbled, inconsistent, or not ours."""


@dataclass(frozen=True, slots=True)
class Header:
    """A message's routing fields."""

    run: str
    src: int
    dst: int
    kind: str


def _torch():
    """torch only if the program already imported it: plain gossip never pays for the import."""
    return sys.modules.get("torch")


# --- encoding ---------------------------------------------------------------------------------------

_descriptors = msgspec.msgpack.Encoder()  # thread-safe; same bytes as msgpack-python for str, int, bytes
_new_tuple = tuple.__new__  # builds an ExtType without ExtType.__new__'s Python-level checks (~0.4 us)
_ExtType = msgpack.ExtType
_ndarray = np.ndarray
_contiguous = np.ascontiguousarray
_sendable: dict[np.dtype, str] = {}  # dtype -> name, for the dtypes that may be sent


def _sendable_name(dtype: np.dtype) -> str:
    """The name of a dtype that may be sent (else TypeError), remembered when its arrays travel as they
    are (dtype.name is a slow property); a big-endian one is not, so its arrays always come here."""
    name = dtype.name
    if name not in ALLOWED_DTYPES:
        raise TypeError(f"dtype {name} cannot be sent")
    if dtype.str[0] != ">":
        _sendable[dtype] = name
    return name


def _little_endian(arr: np.ndarray) -> np.ndarray:
    """Arrays travel little-endian, the order every receiver reads them in (a '>f4' array's bytes sent
    as they are would be read back as other numbers)."""
    return arr.astype(arr.dtype.newbyteorder("<")) if arr.dtype.str[0] == ">" else arr


def _tensor_array(t: Any, torch: Any) -> tuple[np.ndarray, str]:
    """A CPU, contiguous numpy view of a tensor and its dtype name; bfloat16 travels as its int16 bits.
    (detach() and device.type cost ~0.6 us each: only tensors that need them pay.)"""
    if t.requires_grad:
        t = t.detach()
    if not t.is_cpu:
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), "bfloat16"
    arr = t.numpy()
    name = _sendable.get(arr.dtype)
    return (arr, name) if name is not None else (_little_endian(arr), _sendable_name(arr.dtype))


class _Encoder(threading.local):
    """Per thread: a reused msgpack Packer (building one costs more than packing a small header, and one
    must not be shared between threads) and the buffer frames of the message being packed."""

    def __init__(self) -> None:
        self.buffers: list = []
        self.packer = msgpack.Packer(default=self.default, use_bin_type=True)

    def default(self, obj: Any) -> Any:
        """msgpack's hook for what it cannot pack itself: arrays and tensors, numpy scalars, sets."""
        if isinstance(obj, _ndarray):
            arr = _contiguous(obj)
            dtype = _sendable.get(arr.dtype)
            if dtype is None:
                dtype, arr = _sendable_name(arr.dtype), _little_endian(arr)
            origin = _NUMPY
        else:
            torch = sys.modules.get("torch")
            if torch is not None and isinstance(obj, torch.Tensor):
                arr, dtype = _tensor_array(obj, torch)
                origin = _TORCH
            elif isinstance(obj, np.generic):
                return obj.item()
            elif isinstance(obj, tuple | set | frozenset):
                return list(obj)
            else:
                raise TypeError(f"cannot send an object of type {type(obj).__name__}")
        if arr.nbytes <= INLINE_MAX:
            meta = _descriptors.encode((dtype, arr.shape, origin, arr.tobytes()))
            return _new_tuple(_ExtType, (_EXT_INLINE, meta))
        buffers = self.buffers
        buffers.append(memoryview(arr).cast("B"))
        meta = _descriptors.encode((len(buffers) - 1, dtype, arr.shape, origin))
        return _new_tuple(_ExtType, (_EXT_ARRAY, meta))

    def pack(self, obj: Any) -> tuple[bytes, list]:
        """(packed obj, buffer frames of its arrays)."""
        packer = self.packer
        try:
            packed = packer.pack(obj)
        except BaseException:
            packer.reset()  # a failed pack leaves partial bytes behind
            self.buffers = []
            raise
        buffers = self.buffers
        if buffers:
            self.buffers = []
        return packed, buffers


_encoder = _Encoder()
_prefixes: dict[tuple[str, int, int, str], bytes] = {}


def _prefix(route: tuple[str, int, int, str]) -> bytes:
    """The header's bytes up to its payload: the same for every message of the route, so packed once."""
    run, src, dst, kind = route
    prefix = _encoder.pack({"v": VERSION, "r": run, "s": src, "d": dst, "k": kind, "p": None})[0][:-1]
    if len(_prefixes) >= _CACHE_MAX:
        _prefixes.clear()
    _prefixes[route] = prefix
    return prefix


def encode(run: str, src: int, dst: int, kind: str, payload: Any) -> list:
    """Encode one message into frames; arrays become separate frames without an extra copy. Safe to call
    from several threads at once."""
    if not (type(run) is str and type(src) is int and type(dst) is int and type(kind) is str):
        # Routing values of other types (numpy ints, None...) are packed as they come, with the payload.
        header, buffers = _encoder.pack({"v": VERSION, "r": run, "s": src, "d": dst, "k": kind, "p": payload})
        return [header, *buffers]
    route = (run, src, dst, kind)
    prefix = _prefixes.get(route) or _prefix(route)
    if payload is None:
        return [prefix + b"\xc0"]
    name = _sendable.get(payload.dtype) if type(payload) is _ndarray else None
    if name is not None:  # the commonest payload, a bare array of a dtype already sent: see _array_head
        # (np.ascontiguousarray, what the Packer path calls, makes a 0-d array one of shape (1,).)
        key = (name, payload.shape or (1,), _NUMPY)
        head, inline = _array_heads.get(key) or _array_head(*key)
        if inline:  # tobytes copies in C order whatever the layout
            return [b"".join((prefix, head, payload.tobytes()))]
        return [prefix + head, memoryview(_contiguous(payload)).cast("B")]
    # Packed inside a 1-tuple, the payload sits one level deep as in the header map: msgpack's nesting
    # limit then refuses exactly the payloads it refused when the whole map was packed.
    packed, buffers = _encoder.pack((payload,))
    header = prefix + (packed[1:] if len(packed) < 4096 else memoryview(packed)[1:])
    return [header, *buffers] if buffers else [header]


_array_heads: dict[tuple[str, tuple[int, ...], int], tuple[bytes, bool]] = {}


def _array_head(dtype: str, shape: tuple[int, ...], origin: int) -> tuple[bytes, bool]:
    """(bytes, inline) of a bare-array payload up to its data: the whole extension of a framed array,
    or an inline one's extension up to its bytes. They are the same for every array of a dtype and
    shape, so they are packed once, by the Packer path itself (what `default` returns, with zeros for
    the data, cut off), and the frames are byte for byte those of the Packer."""
    key = (dtype, shape, origin)
    found = _array_heads.get(key)
    if found is not None:
        return found
    nbytes = _prod(shape) * _NP_DTYPES[dtype].itemsize
    inline = nbytes <= INLINE_MAX
    if inline:
        ext = _new_tuple(_ExtType, (_EXT_INLINE, _descriptors.encode((dtype, shape, origin, bytes(nbytes)))))
    else:
        ext = _new_tuple(_ExtType, (_EXT_ARRAY, _descriptors.encode((0, dtype, shape, origin))))
    packed = msgpack.packb(ext)
    head = packed[:len(packed) - nbytes] if inline else packed
    if len(_array_heads) >= _CACHE_MAX:
        _array_heads.clear()
    found = _array_heads[key] = (head, inline)
    return found


# --- decoding ---------------------------------------------------------------------------------------

_Size = Annotated[int, msgspec.Meta(ge=0)]
# The descriptors as encode writes them; msgspec checks the types (and that sizes are not negative).
_inline = msgspec.msgpack.Decoder(tuple[str, tuple[_Size, ...], int, bytes])
_framed = msgspec.msgpack.Decoder(tuple[_Size, str, tuple[_Size, ...], int])
_headers: dict[tuple[str, int, int, str], Header] = {}
_readonly_warned = False
_unpackb = msgpack.unpackb
_prod = math.prod
_frombuffer = np.frombuffer


class _Frames:
    """The buffer frames of one message, and which of them its header has claimed (each at most once)."""

    __slots__ = ("buffers", "used")

    def __init__(self, buffers: list) -> None:
        self.buffers = buffers
        self.used: set[int] = set()

    def rebuild(self, code: int, data: bytes) -> Any:
        return _rebuild(code, data, self)


def decode(frame: bytes | memoryview, buffers: list) -> tuple[Header, Any]:
    """Decode a message in one pass: routing fields, and a payload whose arrays are views of the frames."""
    frames = _Frames(buffers) if buffers else None
    try:
        obj = _unpackb(frame, raw=False, strict_map_key=False,
                       ext_hook=_rebuild if frames is None else frames.rebuild)
    except WireError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage
        raise WireError(f"undecodable header ({type(exc).__name__})") from None
    if not isinstance(obj, dict) or obj.get("v") != VERSION:
        raise WireError("not a dsim header")
    try:
        run, src, dst, kind = obj["r"], obj["s"], obj["d"], obj["k"]
    except KeyError:
        raise WireError("header misses routing fields") from None
    if type(run) is str and type(src) is int and type(dst) is int and type(kind) is str:
        header = _headers.get((run, src, dst, kind)) or _header(run, src, dst, kind)
    else:  # converted as they come; never looked up as they are (1 == 1.0 == True, but not as run ids)
        header = _header(run, src, dst, kind)
    used = 0 if frames is None else len(frames.used)
    if used != len(buffers):
        raise WireError(f"{len(buffers)} buffer frames but {used} referenced")
    return header, obj.get("p")


class Inbound:
    """One receiver's decoder: the results of `decode`, sooner for the messages that repeat.

    A sender packs everything of a message but its payload once per route, and a bare array's
    extension once per dtype and shape, so the messages of a lock-step program start with the same
    bytes round after round. Per neighbour they come from, the receiver remembers the heads of the
    messages whose payload is one array (with their Header, and the array's dtype and shape). A frame
    that starts with one and has the size it implies is read as a view of its bytes, without
    msgpack's Unpacker and msgspec, whose set-up costs more than the rest of a small message's path
    (run cold on every wake-up: with the sender's shortcut, 30 % of a 1 KB message's CPU); any other
    frame takes `decode`, and its head is remembered when it is one that dsim writes."""

    __slots__ = ("_seen",)
    _PER_PEER = 16  # heads remembered per neighbour (a few per kind it sends, and its relays)

    def __init__(self) -> None:
        self._seen: dict[int, list[_Known]] = {}

    def decode(self, peer: int, frame: bytes | memoryview, buffers: list) -> tuple[Header, Any]:
        seen = self._seen.get(peer)
        if seen is not None:
            for known in seen:
                head = known.head
                if len(frame) == known.size and \
                        (frame.startswith(head) if type(frame) is bytes else frame[:len(head)] == head):
                    payload = known.read(frame, buffers)
                    if payload is not _MISFIT:
                        return known.header, payload
                    break
        header, payload = decode(frame, buffers)
        known = _Known.of(header, payload)
        if known is not None and len(frame) == known.size and frame[:len(known.head)] == known.head:
            if seen is None:
                seen = self._seen[peer] = []
            elif len(seen) >= self._PER_PEER:
                seen.clear()
            seen.append(known)
        return header, payload


_MISFIT = object()  # _Known.read: the buffer frames are not those the head implies


class _Known:
    """A message head a receiver has seen (route prefix, then the payload's head) and what follows it:
    an array's bytes to the frame's end (inline), or one buffer frame of the array's size."""

    __slots__ = ("head", "header", "size", "nbytes", "dtype", "np_dtype", "shape", "origin", "inline")

    def __init__(self, head: bytes, header: Header, size: int, array: tuple) -> None:
        self.head, self.header, self.size = head, header, size  # size: the header frame's length
        self.dtype, self.shape, self.origin, self.inline, self.nbytes = array
        self.np_dtype = _NP_DTYPES[self.dtype]

    @staticmethod
    def of(header: Header, payload: Any) -> _Known | None:
        """The head dsim writes for this message, when its payload is one CPU array (nothing else
        repeats round after round; a greeting, once per neighbour, is not worth a node's memory)."""
        if type(payload) is _ndarray:
            dtype, origin = _allowed_name(payload.dtype), _NUMPY
        else:
            torch = _torch()
            if torch is None or not isinstance(payload, torch.Tensor) or not payload.is_cpu:
                return None
            dtype = "bfloat16" if payload.dtype == torch.bfloat16 else _allowed_name(payload.numpy().dtype)
            origin = _TORCH
        if dtype is None:
            return None
        route = (header.run, header.src, header.dst, header.kind)
        prefix = _prefixes.get(route) or _prefix(route)
        shape = tuple(payload.shape)
        head, inline = _array_head(dtype, shape, origin)
        nbytes = _prod(shape) * _NP_DTYPES[dtype].itemsize
        size = len(prefix) + len(head) + (nbytes if inline else 0)
        return _Known(prefix + head, header, size, (dtype, shape, origin, inline, nbytes))

    def read(self, frame: bytes | memoryview, buffers: list) -> Any:
        """The payload after the head: a view of the frame's bytes (inline) or of the buffer frame's;
        _MISFIT when the buffer frames are not the ones the head implies."""
        np_dtype = self.np_dtype
        if self.inline:
            if buffers:
                return _MISFIT
            arr = _frombuffer(frame, np_dtype, -1, len(self.head))
        else:
            if len(buffers) != 1 or len(buffers[0]) != self.nbytes:
                return _MISFIT
            arr = _frombuffer(buffers[0], np_dtype)
        if len(self.shape) != 1:
            arr = arr.reshape(self.shape)
        return arr if self.origin != _TORCH else _tensor(arr, self.dtype)


def _allowed_name(dtype: np.dtype) -> str | None:
    name = _sendable.get(dtype) or dtype.name
    return name if name in ALLOWED_DTYPES else None


def _header(run: Any, src: Any, dst: Any, kind: Any) -> Header:
    """A Header from routing values of any type that converts; remembered for the next message."""
    try:
        header = Header(str(run), int(src), int(dst), str(kind))
    except (TypeError, ValueError, OverflowError):
        raise WireError("header misses routing fields") from None
    if len(_headers) >= _CACHE_MAX:
        _headers.clear()
    _headers[(header.run, header.src, header.dst, header.kind)] = header
    return header


def _rebuild(code: int, data: bytes, frames: _Frames | None = None) -> Any:
    """msgpack's ext_hook: the array or tensor that an extension describes."""
    try:
        if code == _EXT_INLINE:
            dtype, shape, origin, buf = _inline.decode(data)
            index = -1
        elif code == _EXT_ARRAY:
            index, dtype, shape, origin = _framed.decode(data)
        else:
            raise WireError(f"unknown extension type {code}")
    except msgspec.MsgspecError:
        dtype, shape, origin, buf, index = _descriptor(code, data)
    np_dtype = _NP_DTYPES.get(dtype)
    if np_dtype is None:
        raise WireError("bad array descriptor")
    if index >= 0:
        if frames is None or index >= len(frames.buffers) or index in frames.used:
            raise WireError("bad array descriptor")
        frames.used.add(index)
        buf = frames.buffers[index]
    if _prod(shape) * np_dtype.itemsize != len(buf):
        raise WireError(f"array of shape {shape} and dtype {dtype} does not match its {len(buf)}-byte frame")
    arr = _ndarray(shape, np_dtype, buf)
    return arr if origin != _TORCH else _tensor(arr, dtype)


def _descriptor(code: int, data: bytes) -> tuple[str, tuple[int, ...], Any, Any, int]:
    """(dtype, shape, origin, inline bytes, frame index) of a descriptor that is not in encode's exact
    form: ints as floats or strings, odd origins... Accepted or refused as the format always has been."""
    try:
        if code == _EXT_ARRAY:
            index, dtype, shape, origin = msgpack.unpackb(data, raw=False)
            index, buf = int(index), None
        else:
            dtype, shape, origin, buf = msgpack.unpackb(data, raw=False)
            index = -1
        shape = tuple(int(s) for s in shape)
    except Exception:
        raise WireError("bad array descriptor") from None
    if dtype not in ALLOWED_DTYPES or any(s < 0 for s in shape) or (code == _EXT_ARRAY and index < 0):
        raise WireError("bad array descriptor")
    if code == _EXT_INLINE and not isinstance(buf, bytes):
        raise WireError("bad inline array")
    return dtype, shape, origin, buf, index


def _tensor(arr: np.ndarray, dtype: str) -> Any:
    """The array as a torch tensor over the same memory.

    The frame is ours alone, so writing through the tensor is safe, but torch warns about a read-only
    array: once per process (TORCH_WARN_ONCE). That one warning is silenced; later tensors skip the
    catch_warnings, which costs several times the rest of a decode."""
    global _readonly_warned
    torch = _torch()
    if torch is None:
        import torch  # a tensor arrived: the receiving program works with torch
    if _readonly_warned or arr.flags.writeable:
        tensor = torch.from_numpy(arr)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(arr)
        _readonly_warned = True
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def frames_size(frames: list) -> int:
    """Bytes on the wire for a message, as counted by both ends."""
    total = 0
    for f in frames:
        total += f.nbytes if type(f) is memoryview else len(f)
    return total
