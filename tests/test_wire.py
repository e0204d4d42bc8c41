"""Wire format: arrays travel as raw frames beside a msgpack header; garbage is refused, never unpickled.

The frames, decoded values and errors below are frozen from the implementation before the msgspec
rewrite (commit c5ebbe2): the wire format must not drift, whatever makes encoding cheaper."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import hashlib
import math
import subprocess
import sys
import threading
import uuid
import warnings
from typing import Any

import msgpack
import msgspec
import numpy as np
import pytest
import torch

from dsim import wire


def roundtrip(payload):
    frames = wire.encode("run1", 3, 7, "model", payload)
    header, out = wire.decode(bytes(frames[0]), [bytes(f) for f in frames[1:]])
    assert header == wire.Header("run1", 3, 7, "model")
    return frames, out


def test_large_arrays_travel_as_their_own_frames_small_ones_inline() -> None:
    x = np.arange(10000, dtype=np.float32).reshape(100, 100)
    small = np.arange(30, dtype=np.int64)
    frames, out = roundtrip({"x": x, "round": 4, "name": "a", "nested": [x[:50], small, {"k": 1.5}]})
    assert len(frames) == 3  # header + one frame per large array
    assert small.nbytes < len(frames[0]) < small.nbytes + 200  # only the small array rides in the header
    assert wire.frames_size(frames) == len(frames[0]) + x.nbytes + x[:50].nbytes
    np.testing.assert_array_equal(out["x"], x)
    np.testing.assert_array_equal(out["nested"][0], x[:50])
    np.testing.assert_array_equal(out["nested"][1], small)
    assert out["round"] == 4 and out["nested"][2] == {"k": 1.5}


def test_large_arrays_are_views_of_the_received_frames() -> None:
    x = np.arange(wire.INLINE_MAX, dtype=np.float32)
    frames = wire.encode("r", 0, 1, "k", {"x": x})
    received = bytearray(frames[1])
    _, out = wire.decode(bytes(frames[0]), [memoryview(received)])
    received[:4] = np.float32(-1).tobytes()
    assert out["x"][0] == -1 and out["x"][1] == 1  # no copy: the array reads the frame's memory


def test_torch_tensors_come_back_as_tensors_including_bfloat16() -> None:
    t = torch.randn(3, 4)
    b = torch.randn(5).to(torch.bfloat16)
    _, out = roundtrip({"t": t, "b": b, "nc": t.t()})
    assert isinstance(out["t"], torch.Tensor) and torch.equal(out["t"], t)
    assert out["b"].dtype == torch.bfloat16 and torch.equal(out["b"], b)
    assert torch.equal(out["nc"], t.t())  # non-contiguous input is sent contiguous


def test_read_only_frames_give_tensors_without_warnings() -> None:
    frames = wire.encode("r", 0, 1, "k", {"small": torch.ones(3), "big": torch.ones(wire.INLINE_MAX)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            _, out = wire.decode(bytes(frames[0]), [bytes(f) for f in frames[1:]])
    assert torch.equal(out["big"], torch.ones(wire.INLINE_MAX))


def test_objects_that_are_not_data_are_refused() -> None:
    with pytest.raises(TypeError):
        wire.encode("r", 0, 1, "k", {"f": object()})
    with pytest.raises(TypeError):
        wire.encode("r", 0, 1, "k", np.array(["a", "b"], dtype=object))


@pytest.mark.parametrize("frame", [b"", b"\x00\x01garbage", msgpack.packb([1, 2]), msgpack.packb({"v": 99})])
def test_garbled_headers_raise_wire_error(frame: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(frame, [])


def test_buffer_that_does_not_match_its_descriptor_is_refused() -> None:
    frames = wire.encode("r", 0, 1, "k", {"x": np.zeros(wire.INLINE_MAX, dtype=np.float64)})
    header = bytes(frames[0])
    with pytest.raises(wire.WireError):
        wire.decode(header, [b"\x00" * 79])
    with pytest.raises(wire.WireError):
        wire.decode(header, [])
    with pytest.raises(wire.WireError):
        wire.decode(header, [bytes(frames[1]), b"extra"])


# --- frozen behaviour -------------------------------------------------------------------------------


def _deep(n: int) -> Any:
    x: Any = 0
    for _ in range(n):
        x = [x]
    return x


def _payloads() -> dict[str, Any]:
    """Payloads that cover msgpack's encodings at their size boundaries, and every array path."""
    f32 = np.arange(256, dtype=np.float32)
    just_framed = np.arange(wire.INLINE_MAX // 4 + 1, dtype=np.float32)
    t = torch.arange(12.0).reshape(3, 4) / 7
    return {
        "none": None,
        "true": True,
        "ints": [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1,
                 -1, -32, -33, -128, -129, -32768, -32769, -2**31, -2**31 - 1, -2**63],
        "floats": [0.0, -0.0, 1.5, -2.25, 1e300, 5e-324, math.inf, -math.inf, math.nan],
        "strings": ["", "a", "x" * 31, "x" * 32, "x" * 255, "x" * 256, "x" * 65535, "x" * 65536, "héllo ✓ 日本"],
        "bytes": [b"", b"\x00\xff", b"b" * 255, b"b" * 256, b"b" * 65535, b"b" * 65536, bytearray(b"ba"),
                  memoryview(b"mv")],
        "containers": {"list15": list(range(15)), "list16": list(range(16)), "list65536": [0] * 65536,
                       "dict15": {str(i): i for i in range(15)}, "dict16": {str(i): i for i in range(16)},
                       "empty": [[], {}, ()], "tuple": (1, (2, 3)), "set": {3, 1, 2}, "frozenset": frozenset({5})},
        "nested": {"a": [{"b": [{"c": None}]}], "d": {"e": {"f": [1.5, "g", b"h"]}}},
        "keys": {1: "int", -5: "neg", 1.5: "float", b"k": "bytes", None: "none", False: "bool", "s": "str"},
        "numpy_scalars": [np.float32(1.5), np.float64(-2.5), np.int8(-3), np.int64(2**40), np.uint64(2**64 - 1),
                          np.bool_(True), np.bool_(False), np.str_("s"), np.float16(0.5)],
        "deep": _deep(100),
        "deepest": _deep(1023),  # msgpack-python packs at most 1024 levels, the header map included
        "array_1kb": f32,
        "array_dtypes": {name: np.arange(6).astype(name).reshape(2, 3)
                         for name in sorted(wire.ALLOWED_DTYPES - {"bfloat16"})},
        "array_shapes": [np.zeros(()), np.zeros((0,)), np.zeros((0, 2**33), np.uint8), np.zeros((3, 0, 2)),
                         np.ones((1, 1, 1, 1)), np.zeros((70000, 0), np.int8)],
        "array_bin_sizes": [np.zeros(255, np.uint8), np.zeros(256, np.uint8), np.zeros(65535 // 4, np.uint8),
                            np.full(wire.INLINE_MAX, 7, np.uint8)],
        "array_layouts": [np.arange(20.0).reshape(4, 5)[:, ::2], np.asfortranarray(np.arange(6.0).reshape(2, 3)),
                          np.arange(4, dtype=">f4"), np.ma.masked_array([1.0, 2.0], mask=[0, 1])],
        "framed_1mb": np.arange(262144, dtype=np.float32),
        "framed_mixed": {"x": just_framed, "small": np.arange(30), "round": 4,
                         "list": [just_framed[:-1].copy(), np.arange(wire.INLINE_MAX + 1, dtype=np.uint8), f32,
                                  np.zeros((256, 65, 1), np.uint8)]},
        "small_dict": {"round": 3, "x": np.arange(10, dtype=np.float64)},
        "tensors": {"t": t, "b": (torch.arange(5) / 3).to(torch.bfloat16), "nc": t.t(), "i": torch.arange(4),
                    "scalar": torch.tensor(2.5), "grad": torch.ones(3, requires_grad=True),
                    "bool": torch.tensor([True, False]), "half": torch.ones(2, dtype=torch.float16)},
        "tensors_framed": {"t": torch.arange(8192.0), "b": torch.arange(16384.0).to(torch.bfloat16),
                           "nc": torch.arange(8192.0).reshape(64, 128).t()},
    }


_ROUTES = {
    "plain": ("run1", 3, 7, "model"),
    "unicode": ("ruñ-✓", 0, 2**40, ""),
    "extremes": ("r" * 40, 2**64 - 1, -2**63, "k" * 300),
    "numpy": (np.str_("run"), np.int64(3), np.uint8(7), "k"),
    "bool": ("r", True, False, "k"),
    "none": (None, 1, 2, None),
}


def _digest(frames: list) -> str:
    h = hashlib.sha256()
    for f in frames:
        data = bytes(f)
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def _describe(obj: Any) -> str:
    """A decoded value in words: types, dtypes, shapes, bytes and writability all count."""
    if isinstance(obj, np.ndarray):
        data = hashlib.sha256(obj.tobytes()).hexdigest()[:12]
        return f"nd({obj.dtype.str},{obj.shape},{obj.flags.writeable},{data})"
    if isinstance(obj, torch.Tensor):
        raw = obj.view(torch.int16) if obj.dtype == torch.bfloat16 else obj
        return f"pt({obj.dtype},{tuple(obj.shape)},{hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:12]})"
    parts = []  # loops, not comprehensions: one frame per level of a deeply nested payload
    if isinstance(obj, dict):
        for k, v in obj.items():
            parts.append(_describe(k) + ":" + _describe(v))
        return "{" + ",".join(parts) + "}"
    if isinstance(obj, list | tuple):
        for v in obj:
            parts.append(_describe(v))
        return type(obj).__name__ + "[" + ",".join(parts) + "]"
    return f"{type(obj).__name__}:{obj!r}"


def _outcome(fn, *args) -> tuple:
    """("ok", digest) of frames or of a decoded message, else the error's type and message."""
    try:
        result = fn(*args)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], wire.Header):
        header, payload = result
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 5000))  # the deepest payload nests 1023 lists
        try:
            described = _describe(payload)
        finally:
            sys.setrecursionlimit(limit)
        return "ok", dataclasses.astuple(header), hashlib.sha256(described.encode()).hexdigest()[:16]
    return "ok", _digest(result)


def _decode_frames(frames: list) -> tuple:
    return _outcome(wire.decode, bytes(frames[0]), [bytes(f) for f in frames[1:]])


# Frames of wire.encode("run1", 3, 7, "model", payload) before the rewrite.
FRAMES = {
    "none": "fd576132f80d6790",
    "true": "f57e6a482551ee5c",
    "ints": "a2ef0af2184a5d2d",
    "floats": "5a60e8cc71319b05",
    "strings": "2b0dff2cf395b70a",
    "bytes": "7251fd2b6682ef56",
    "containers": "28e45d0b818aea27",
    "nested": "a8a8aaaddfa4cf65",
    "keys": "28a521413903523c",
    "numpy_scalars": "d351654988a6b1f3",
    "deep": "ce1f6dda9d4ee2d5",
    "deepest": "3ee6839241747015",
    "array_1kb": "9f641dcb9959c202",
    "array_dtypes": "fb4944ef52a9ecf0",
    "array_shapes": "db5848343cb6f4c7",
    "array_bin_sizes": "342116d2754ef59b",
    # Changed on purpose (was 10b2fabc117f3fba): its big-endian '>f4' array now travels little-endian.
    "array_layouts": "c7e6d6bbeec789d9",
    "framed_1mb": "587a8c43de4e1140",
    "framed_mixed": "56513448208e8c11",
    "small_dict": "200562dad9cf17b8",
    "tensors": "193ce8ff65507e34",
    "tensors_framed": "743b1f2b4ebe6533",
}
# What those frames decoded to.
DECODED = {
    "none": ("ok", ("run1", 3, 7, "model"), "99bf08d8dc95c6ae"),
    "true": ("ok", ("run1", 3, 7, "model"), "cbc78c2f695cf0a5"),
    "ints": ("ok", ("run1", 3, 7, "model"), "db56d6a649efee27"),
    "floats": ("ok", ("run1", 3, 7, "model"), "24bf0765cb5fe4ab"),
    "strings": ("ok", ("run1", 3, 7, "model"), "9b7d1d196a24823d"),
    "bytes": ("ok", ("run1", 3, 7, "model"), "5c46582fe867e097"),
    "containers": ("ok", ("run1", 3, 7, "model"), "139559486aad734d"),
    "nested": ("ok", ("run1", 3, 7, "model"), "de15714b83ce84f3"),
    "keys": ("ok", ("run1", 3, 7, "model"), "471bf4ab43dac581"),
    "numpy_scalars": ("ok", ("run1", 3, 7, "model"), "ce7dccbfaab0d445"),
    "deep": ("ok", ("run1", 3, 7, "model"), "5df65c79fbad19c0"),
    "deepest": ("ok", ("run1", 3, 7, "model"), "2a476db21833c35a"),
    "array_1kb": ("ok", ("run1", 3, 7, "model"), "cfe5d0b9930df120"),
    "array_dtypes": ("ok", ("run1", 3, 7, "model"), "da7260718562b051"),
    "array_shapes": ("ok", ("run1", 3, 7, "model"), "5a2e5a85df6c9857"),
    "array_bin_sizes": ("ok", ("run1", 3, 7, "model"), "490da479adbda2b3"),
    # Changed on purpose (was ...63ddd8e65553ef24): the '>f4' array now comes back as the numbers sent.
    "array_layouts": ("ok", ("run1", 3, 7, "model"), "f40a6579e70aac55"),
    "framed_1mb": ("ok", ("run1", 3, 7, "model"), "f310d6ed02eeeac0"),
    "framed_mixed": ("ok", ("run1", 3, 7, "model"), "ae5ef1c78418a5a4"),
    "small_dict": ("ok", ("run1", 3, 7, "model"), "af65e844ee4526b4"),
    "tensors": ("ok", ("run1", 3, 7, "model"), "e30f639dc9bd81eb"),
    "tensors_framed": ("ok", ("run1", 3, 7, "model"), "004fecb501d6a82c"),
}
# Frames of wire.encode(*route, {"round": 3, "x": array}) before the rewrite.
ROUTE_FRAMES = {
    "plain": "200562dad9cf17b8",
    "unicode": "e03813ae2291e72e",
    "extremes": "98970513de9e9976",
    "numpy": "1eab6cbb22ffc20d",
    "bool": "e298cbd88e9287bd",
    "none": "53553d4a2ac94356",
}


@pytest.mark.parametrize("name", sorted(FRAMES))
def test_frames_are_byte_identical_to_the_previous_implementation(name: str) -> None:
    payload = _payloads()[name]
    assert _digest(wire.encode("run1", 3, 7, "model", payload)) == FRAMES[name]


@pytest.mark.parametrize("name", sorted(DECODED))
def test_frames_decode_as_before(name: str) -> None:
    assert _decode_frames(wire.encode("run1", 3, 7, "model", _payloads()[name])) == DECODED[name]


@pytest.mark.parametrize("name", sorted(ROUTE_FRAMES))
def test_routing_fields_are_packed_as_before(name: str) -> None:
    frames = wire.encode(*_ROUTES[name], {"round": 3, "x": np.arange(10.0)})
    assert _digest(frames) == ROUTE_FRAMES[name]
    assert _decode_frames(frames)[:2] == ("ok", tuple(str(x) if isinstance(x, str) or x is None else int(x)
                                                      for x in _ROUTES[name]))


def _reference_encode(run: Any, src: Any, dst: Any, kind: Any, payload: Any) -> list:
    """The wire format as the module docstring states it, packed with plain msgpack-python."""
    buffers: list = []

    def default(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().contiguous()
            arr, dtype, origin = (t.view(torch.int16).numpy(), "bfloat16", 1) if t.dtype == torch.bfloat16 \
                else (t.numpy(), str(t.numpy().dtype), 1)
        elif isinstance(obj, np.ndarray):
            arr = np.ascontiguousarray(obj)
            arr = arr.astype(arr.dtype.newbyteorder("<"))  # the wire's byte order
            dtype, origin = arr.dtype.name, 0
        elif isinstance(obj, np.generic):
            return obj.item()
        elif isinstance(obj, set | frozenset):
            return list(obj)
        else:
            raise TypeError(type(obj).__name__)
        if arr.nbytes <= wire.INLINE_MAX:
            return msgpack.ExtType(2, msgpack.packb([dtype, list(arr.shape), origin, arr.tobytes()]))
        buffers.append(arr.tobytes())
        return msgpack.ExtType(1, msgpack.packb([len(buffers) - 1, dtype, list(arr.shape), origin]))

    header = msgpack.packb({"v": 1, "r": run, "s": src, "d": dst, "k": kind, "p": payload}, default=default)
    return [header, *buffers]


@pytest.mark.parametrize("name", sorted(_payloads()))
def test_frames_match_a_reference_packed_with_msgpack(name: str) -> None:
    payload = _payloads()[name]
    got = [bytes(f) for f in wire.encode("run1", 3, 7, "model", payload)]
    assert got == _reference_encode("run1", 3, 7, "model", payload)


def test_tuple_keys_are_sent_but_refused_on_receipt() -> None:
    """msgpack packs a tuple key as an array, which cannot key a dict on receipt: as before the rewrite."""
    frames = wire.encode("r", 0, 1, "k", {(1, 2): "t"})
    assert bytes(frames[0]).endswith(b"\xa1p\x81\x92\x01\x02\xa1t")
    with pytest.raises(wire.WireError, match="undecodable header"):
        wire.decode(frames[0], [])


class _Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass
class _Point:
    x: int = 1


def _unsendable() -> dict[str, Any]:
    return {
        "object": object(),
        "object_array": np.array(["a", "b"], dtype=object),
        "str_array": np.array(["a"]),
        "complex_array": np.zeros(2, np.complex64),
        "complex_tensor": torch.zeros(2, dtype=torch.complex64),
        "int_too_big": 2**64,
        "int_too_small": -2**63 - 1,
        "complex": 1j,
        "numpy_complex": np.complex128(1j),
        "datetime": datetime.datetime(2020, 1, 1),
        "numpy_datetime": np.datetime64("2020-01-01"),
        "timedelta": datetime.timedelta(1),
        "enum": _Colour.RED,
        "dataclass": _Point(),
        "uuid": uuid.UUID(int=1),
        "decimal": decimal.Decimal("1.5"),
        "msgspec_ext": msgspec.msgpack.Ext(1, b""),
        "surrogate": "\ud800",
        "too_deep": _deep(1023),  # one level more than "deepest" above: the {"x": ...}
        "range": range(3),
        "generator": (i for i in range(3)),
    }


# How wire.encode("r", 0, 1, "k", {"x": obj}) failed before the rewrite.
ENCODE_ERRORS = {
    "object": ("TypeError", "cannot send an object of type object"),
    "object_array": ("TypeError", "dtype object cannot be sent"),
    "str_array": ("TypeError", "dtype str32 cannot be sent"),
    "complex_array": ("TypeError", "dtype complex64 cannot be sent"),
    "complex_tensor": ("TypeError", "dtype complex64 cannot be sent"),
    "int_too_big": ("TypeError", "cannot send an object of type int"),
    "int_too_small": ("TypeError", "cannot send an object of type int"),
    "complex": ("TypeError", "cannot send an object of type complex"),
    "numpy_complex": ("TypeError", "can not serialize 'complex' object"),
    "datetime": ("TypeError", "cannot send an object of type datetime"),
    "numpy_datetime": ("TypeError", "can not serialize 'datetime.date' object"),
    "timedelta": ("TypeError", "cannot send an object of type timedelta"),
    "enum": ("TypeError", "cannot send an object of type _Colour"),
    "dataclass": ("TypeError", "cannot send an object of type _Point"),
    "uuid": ("TypeError", "cannot send an object of type UUID"),
    "decimal": ("TypeError", "cannot send an object of type Decimal"),
    "msgspec_ext": ("TypeError", "cannot send an object of type Ext"),
    "surrogate": (
        "UnicodeEncodeError",
        "'utf-8' codec can't encode character '\\ud800' in position 0: surrogates not allowed",
    ),
    "too_deep": ("ValueError", "recursion limit exceeded."),
    "range": ("TypeError", "cannot send an object of type range"),
    "generator": ("TypeError", "cannot send an object of type generator"),
}


@pytest.mark.parametrize("name", sorted(ENCODE_ERRORS))
def test_unsendable_payloads_fail_as_before(name: str) -> None:
    assert _outcome(wire.encode, "r", 0, 1, "k", {"x": _unsendable()[name]}) == ENCODE_ERRORS[name]
    # A failed encode leaves nothing behind for the next one.
    assert _digest(wire.encode("run1", 3, 7, "model", _payloads()["small_dict"])) == FRAMES["small_dict"]


def _bad_routes() -> dict[str, tuple]:
    return {"object_run": (object(), 0, 1, "k"), "src_too_big": ("r", 2**64, 1, "k"),
            "dst_too_small": ("r", 0, -2**63 - 1, "k"), "surrogate_kind": ("r", 0, 1, "\ud800"),
            "float_src": ("r", 0.5, 1, "k"), "array_src": ("r", np.ones(3), 1, "k")}


# How wire.encode(*route, None) came out before the rewrite.
ROUTE_ERRORS = {
    "object_run": ("TypeError", "cannot send an object of type object"),
    "src_too_big": ("TypeError", "cannot send an object of type int"),
    "dst_too_small": ("TypeError", "cannot send an object of type int"),
    "surrogate_kind": (
        "UnicodeEncodeError",
        "'utf-8' codec can't encode character '\\ud800' in position 0: surrogates not allowed",
    ),
    "float_src": ("ok", "3b45f9b265e2b5f0"),
    "array_src": ("ok", "ccd9d1a76cde8f95"),
}


@pytest.mark.parametrize("name", sorted(ROUTE_ERRORS))
def test_unusual_routing_fields_encode_as_before(name: str) -> None:
    assert _outcome(wire.encode, *_bad_routes()[name], None) == ROUTE_ERRORS[name]


def _ext(code: int, *descriptor: Any) -> msgpack.ExtType:
    return msgpack.ExtType(code, msgpack.packb(list(descriptor)))


def _header(payload: Any = None, **fields: Any) -> bytes:
    header = {"v": 1, "r": "r", "s": 0, "d": 1, "k": "k", "p": payload}
    header.update(fields)
    return msgpack.packb({k: v for k, v in header.items() if v is not _ABSENT})


_ABSENT = object()
_F32 = np.arange(4, dtype=np.float32).tobytes()


def _crafted() -> dict[str, tuple[bytes, list]]:
    """Frames that our encoder never makes: each is refused, or accepted, exactly as before."""
    return {
        "empty": (b"", []),
        "garbage": (b"\x00\x01garbage", []),
        "list": (msgpack.packb([1, 2]), []),
        "wrong_version": (_header(v=99), []),
        "version_true": (_header(v=True), []),
        "version_float": (_header(v=1.0), []),
        "missing_routing": (msgpack.packb({"v": 1}), []),
        "missing_kind": (_header(k=_ABSENT), []),
        "missing_payload": (_header(p=_ABSENT), []),
        "run_int": (_header(r=5), []),
        "src_str": (_header(s="3"), []),
        "src_float": (_header(s=2.5), []),
        "src_none": (_header(s=None), []),
        "src_nan": (_header(s=math.nan), []),
        "src_list": (_header(s=[1]), []),
        "extra_key": (_header(z=[1, 2], p=3), []),
        "int_keys": (msgpack.packb({"v": 1, "r": "r", "s": 0, "d": 1, "k": "k", 7: 8}), []),
        "trailing": (_header() + b"\xc0", []),
        "truncated": (_header()[:-1], []),
        "deep": (_header()[:-1] + b"\x91" * 2000 + b"\xc0", []),
        "timestamp": (_header(p=msgpack.Timestamp(1, 5)), []),
        "bad_timestamp": (_header()[:-1] + b"\xd4\xff\x00", []),
        "unknown_ext": (_header(p=msgpack.ExtType(7, b"")), []),
        "ext_key": (_header(p={msgpack.ExtType(2, msgpack.packb(["float32", [4], 0, _F32])): 1}), []),
        "inline_ok": (_header(p=_ext(2, "float32", [4], 0, _F32)), []),
        "inline_tensor": (_header(p=_ext(2, "float32", [2, 2], 1, _F32)), []),
        "inline_bfloat16": (_header(p=_ext(2, "bfloat16", [8], 1, _F32)), []),
        "inline_bfloat16_numpy": (_header(p=_ext(2, "bfloat16", [8], 0, _F32)), []),
        "inline_bad_dtype": (_header(p=_ext(2, "object", [4], 0, _F32)), []),
        "inline_unhashable_dtype": (_header(p=_ext(2, ["float32"], [4], 0, _F32)), []),
        "inline_negative_shape": (_header(p=_ext(2, "float32", [-4], 0, _F32)), []),
        "inline_size_mismatch": (_header(p=_ext(2, "float32", [5], 0, _F32)), []),
        "inline_str_data": (_header(p=_ext(2, "uint8", [1], 0, "x")), []),
        "inline_three_fields": (_header(p=_ext(2, "float32", [4], _F32)), []),
        "inline_garbage": (_header(p=msgpack.ExtType(2, b"\xc1")), []),
        "inline_not_list": (_header(p=msgpack.ExtType(2, msgpack.packb(5))), []),
        "inline_float_shape": (_header(p=_ext(2, "float32", [2.0, 2.0], 0, _F32)), []),
        "inline_str_shape": (_header(p=_ext(2, "float32", "4", 0, _F32)), []),
        "inline_scalar_shape": (_header(p=_ext(2, "float32", 4, 0, _F32)), []),
        "inline_bool_shape": (_header(p=_ext(2, "uint8", [True], 0, b"x")), []),
        "inline_huge_shape": (_header(p=_ext(2, "float32", [2**64 - 1, 0], 0, b"")), []),
        "inline_str_origin": (_header(p=_ext(2, "float32", [4], "torch", _F32)), []),
        "inline_float_origin": (_header(p=_ext(2, "float32", [4], 1.0, _F32)), []),
        "inline_none_origin": (_header(p=_ext(2, "float32", [4], None, _F32)), []),
        "framed_ok": (_header(p=_ext(1, 0, "float32", [4], 0)), [_F32]),
        "framed_tensor": (_header(p=[_ext(1, 1, "int16", [8], 1), _ext(1, 0, "bfloat16", [8], 1)]), [_F32, _F32]),
        "framed_no_buffer": (_header(p=_ext(1, 0, "float32", [4], 0)), []),
        "framed_out_of_range": (_header(p=_ext(1, 1, "float32", [4], 0)), [_F32]),
        "framed_twice": (_header(p=[_ext(1, 0, "float32", [4], 0), _ext(1, 0, "float32", [4], 0)]), [_F32]),
        "framed_unreferenced": (_header(p=_ext(1, 0, "float32", [4], 0)), [_F32, _F32]),
        "framed_unreferenced_none": (_header(), [_F32]),
        "framed_str_index": (_header(p=_ext(1, "0", "float32", [4], 0)), [_F32]),
        "framed_float_index": (_header(p=_ext(1, 0.0, "float32", [4], 0)), [_F32]),
        "framed_size_mismatch": (_header(p=_ext(1, 0, "float32", [3], 0)), [_F32]),
        "framed_bad_dtype": (_header(p=_ext(1, 0, "complex64", [2], 0)), [_F32]),
        "framed_five_fields": (_header(p=_ext(1, 0, "float32", [4], 0, 0)), [_F32]),
        "framed_memoryview": (_header(p=_ext(1, 0, "float32", [2, 2], 0)), [memoryview(bytearray(_F32))]),
        "framed_empty": (_header(p=_ext(1, 0, "float32", [0, 3], 0)), [b""]),
        "framed_bad_route": (_header(p=_ext(1, 0, "float32", [4], 0), s=None), [_F32]),
        "framed_bad_route_unreferenced": (_header(s=None), [_F32]),
    }


# How the crafted frames decoded before the rewrite.
CRAFTED = {
    "empty": ("WireError", "undecodable header (ValueError)"),
    "garbage": ("WireError", "undecodable header (ExtraData)"),
    "list": ("WireError", "not a dsim header"),
    "wrong_version": ("WireError", "not a dsim header"),
    "version_true": ("ok", ("r", 0, 1, "k"), "99bf08d8dc95c6ae"),
    "version_float": ("ok", ("r", 0, 1, "k"), "99bf08d8dc95c6ae"),
    "missing_routing": ("WireError", "header misses routing fields"),
    "missing_kind": ("WireError", "header misses routing fields"),
    "missing_payload": ("ok", ("r", 0, 1, "k"), "99bf08d8dc95c6ae"),
    "run_int": ("ok", ("5", 0, 1, "k"), "99bf08d8dc95c6ae"),
    "src_str": ("ok", ("r", 3, 1, "k"), "99bf08d8dc95c6ae"),
    "src_float": ("ok", ("r", 2, 1, "k"), "99bf08d8dc95c6ae"),
    "src_none": ("WireError", "header misses routing fields"),
    "src_nan": ("WireError", "header misses routing fields"),
    "src_list": ("WireError", "header misses routing fields"),
    "extra_key": ("ok", ("r", 0, 1, "k"), "c58cbc1e042c3c5c"),
    "int_keys": ("ok", ("r", 0, 1, "k"), "99bf08d8dc95c6ae"),
    "trailing": ("WireError", "undecodable header (ExtraData)"),
    "truncated": ("WireError", "undecodable header (ValueError)"),
    "deep": ("WireError", "undecodable header (StackError)"),
    "timestamp": ("ok", ("r", 0, 1, "k"), "c11cb0059802e62b"),
    "bad_timestamp": ("WireError", "undecodable header (ValueError)"),
    "unknown_ext": ("WireError", "unknown extension type 7"),
    "ext_key": ("WireError", "undecodable header (TypeError)"),
    "inline_ok": ("ok", ("r", 0, 1, "k"), "265c2cc0805fc772"),
    "inline_tensor": ("ok", ("r", 0, 1, "k"), "852aa5184164196e"),
    "inline_bfloat16": ("ok", ("r", 0, 1, "k"), "1865ae6478d4052f"),
    "inline_bfloat16_numpy": ("ok", ("r", 0, 1, "k"), "acc82c58f33d4951"),
    "inline_bad_dtype": ("WireError", "bad array descriptor"),
    "inline_unhashable_dtype": ("WireError", "undecodable header (TypeError)"),
    "inline_negative_shape": ("WireError", "bad array descriptor"),
    "inline_size_mismatch": (
        "WireError",
        "array of shape (5,) and dtype float32 does not match its 16-byte frame",
    ),
    "inline_str_data": ("WireError", "bad inline array"),
    "inline_three_fields": ("WireError", "bad array descriptor"),
    "inline_garbage": ("WireError", "bad array descriptor"),
    "inline_not_list": ("WireError", "bad array descriptor"),
    "inline_float_shape": ("ok", ("r", 0, 1, "k"), "eae43d96f4292a1e"),
    "inline_str_shape": ("ok", ("r", 0, 1, "k"), "265c2cc0805fc772"),
    "inline_scalar_shape": ("WireError", "bad array descriptor"),
    "inline_bool_shape": ("ok", ("r", 0, 1, "k"), "7975398eb30becb1"),
    "inline_huge_shape": ("WireError", "undecodable header (ValueError)"),
    "inline_str_origin": ("ok", ("r", 0, 1, "k"), "265c2cc0805fc772"),
    "inline_float_origin": ("ok", ("r", 0, 1, "k"), "1b0f0ef8cb96abf5"),
    "inline_none_origin": ("ok", ("r", 0, 1, "k"), "265c2cc0805fc772"),
    "framed_ok": ("ok", ("r", 0, 1, "k"), "265c2cc0805fc772"),
    "framed_tensor": ("ok", ("r", 0, 1, "k"), "049f693a4023857e"),
    "framed_no_buffer": ("WireError", "bad array descriptor"),
    "framed_out_of_range": ("WireError", "bad array descriptor"),
    "framed_twice": ("WireError", "bad array descriptor"),
    "framed_unreferenced": ("WireError", "2 buffer frames but 1 referenced"),
    "framed_unreferenced_none": ("WireError", "1 buffer frames but 0 referenced"),
    "framed_str_index": ("ok", ("r", 0, 1, "k"), "265c2cc0805fc772"),
    "framed_float_index": ("ok", ("r", 0, 1, "k"), "265c2cc0805fc772"),
    "framed_size_mismatch": (
        "WireError",
        "array of shape (3,) and dtype float32 does not match its 16-byte frame",
    ),
    "framed_bad_dtype": ("WireError", "bad array descriptor"),
    "framed_five_fields": ("WireError", "bad array descriptor"),
    "framed_memoryview": ("ok", ("r", 0, 1, "k"), "f8469db34afa795d"),
    "framed_empty": ("ok", ("r", 0, 1, "k"), "19c02ce84276a5fb"),
    "framed_bad_route": ("WireError", "header misses routing fields"),
    "framed_bad_route_unreferenced": ("WireError", "header misses routing fields"),
}


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_crafted_frames_decode_as_before(name: str) -> None:
    frame, buffers = _crafted()[name]
    assert _outcome(wire.decode, frame, buffers) == CRAFTED[name]


@pytest.mark.parametrize("frame", [_header(s=math.inf), _header(p=_ext(1, -1, "float32", [4], 0))],
                         ids=["infinite_src", "negative_index"])
def test_garbage_that_escaped_as_another_error_is_a_wire_error(frame: bytes) -> None:
    """Before the rewrite these raised OverflowError and 'undecodable header (UnboundLocalError)'."""
    with pytest.raises(wire.WireError):
        wire.decode(frame, [_F32])


def test_encoding_from_many_threads_at_once_gives_the_same_frames() -> None:
    payloads = _payloads()
    names = ["framed_mixed", "tensors", "small_dict", "containers", "array_dtypes", "tensors_framed"]
    expected = {n: _digest(wire.encode("run1", 3, 7, "model", payloads[n])) for n in names}
    wrong: list = []

    def work() -> None:
        for i in range(60):
            name = names[i % len(names)]
            if _digest(wire.encode("run1", 3, 7, "model", payloads[name])) != expected[name]:
                wrong.append(name)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_torch_is_imported_only_when_a_tensor_arrives() -> None:
    script = (
        "import sys, msgpack, numpy as np\n"
        "from dsim import wire\n"
        "wire.decode(wire.encode('r', 0, 1, 'k', {'x': np.ones(3), 'y': np.ones(9000)})[0], [bytes(8 * 9000)])\n"
        "assert 'torch' not in sys.modules\n"
        "ext = msgpack.ExtType(2, msgpack.packb(['float32', [1], 1, np.ones(1, np.float32).tobytes()]))\n"
        "frame = msgpack.packb({'v': 1, 'r': 'r', 's': 0, 'd': 1, 'k': 'k', 'p': ext})\n"
        "t = wire.decode(frame, [])[1]\n"
        "assert type(t).__name__ == 'Tensor' and t.tolist() == [1.0], t\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


# --- Inbound: a receiver's decoder that reads repeated heads without msgpack ----------------------------

def _twice(inbound: wire.Inbound, peer: int, frame: bytes, buffers: list) -> list[tuple]:
    """Outcomes of decoding the same frame twice: the first may teach the Inbound its head, the
    second then takes the short path."""
    return [_outcome(inbound.decode, peer, frame, buffers) for _ in range(2)]


@pytest.mark.parametrize("name", sorted(DECODED))
def test_inbound_decodes_every_payload_as_decode_does(name: str) -> None:
    frames = wire.encode("run1", 3, 7, "model", _payloads()[name])
    assert _twice(wire.Inbound(), 3, bytes(frames[0]), [bytes(f) for f in frames[1:]]) == [DECODED[name]] * 2


@pytest.mark.parametrize("name", sorted(CRAFTED))
def test_inbound_refuses_and_accepts_crafted_frames_as_decode_does(name: str) -> None:
    frame, buffers = _crafted()[name]
    inbound = wire.Inbound()
    for shape in [(4,), (1,), (3,)]:  # heads of the crafted frames' route, learnt first
        sent = wire.encode("r", 0, 1, "k", np.zeros(shape, np.float32))
        inbound.decode(0, bytes(sent[0]), [])
    assert _twice(inbound, 0, frame, buffers) == [CRAFTED[name]] * 2


def _bare_arrays() -> list:
    arrays = [np.arange(6).astype(name).reshape(2, 3) for name in sorted(wire.ALLOWED_DTYPES - {"bfloat16"})]
    arrays += [np.zeros(()), np.zeros((0,)), np.zeros((3, 0, 2)), np.zeros(255, np.uint8), np.zeros(256, np.uint8),
               np.zeros(65535, np.uint8), np.full(wire.INLINE_MAX, 7, np.uint8), np.arange(wire.INLINE_MAX // 4 + 1.0),
               np.arange(20.0).reshape(4, 5)[:, ::2], np.asfortranarray(np.arange(6.0).reshape(2, 3)),
               np.arange(262144, dtype=np.float32).reshape(512, 512)]
    return arrays + [torch.arange(12.0).reshape(3, 4), (torch.arange(5) / 3).to(torch.bfloat16), torch.tensor(2.5),
                     torch.arange(8192.0), torch.arange(16384.0).to(torch.bfloat16)]


@pytest.mark.parametrize("index", range(len(_bare_arrays())))
def test_a_bare_array_is_packed_as_msgpack_packs_it_and_read_back_the_same_both_ways(index: int) -> None:
    payload = _bare_arrays()[index]
    frames = wire.encode("run1", 3, 7, "model", payload)
    assert [bytes(f) for f in frames] == _reference_encode("run1", 3, 7, "model", payload)
    header, buffers = bytes(frames[0]), [bytes(f) for f in frames[1:]]
    expected = _outcome(wire.decode, header, buffers)
    assert expected[0] == "ok"
    assert _twice(wire.Inbound(), 3, header, buffers) == [expected] * 2


def test_inbound_reads_a_learnt_head_only_from_frames_of_the_size_it_implies() -> None:
    inbound = wire.Inbound()
    x = np.arange(256, dtype=np.float32)
    (frame,) = wire.encode("run1", 3, 7, "model", x)
    inbound.decode(3, frame, [])
    header, out = inbound.decode(3, frame, [])
    assert header == wire.Header("run1", 3, 7, "model") and np.array_equal(out, x) and not out.flags.writeable
    assert _outcome(inbound.decode, 3, frame[:-4], []) == _outcome(wire.decode, frame[:-4], [])
    assert _outcome(inbound.decode, 3, frame + b"\x00", []) == _outcome(wire.decode, frame + b"\x00", [])
    assert _outcome(inbound.decode, 3, frame, [b"1234"]) == ("WireError", "1 buffer frames but 0 referenced")
    (longer,) = wire.encode("run1", 3, 7, "model", np.arange(300, dtype=np.float32))
    assert np.array_equal(inbound.decode(3, longer, [])[1], np.arange(300, dtype=np.float32))
    # The same frame from another neighbour (a relay) is read as well: heads are kept per neighbour.
    assert np.array_equal(inbound.decode(5, frame, [])[1], x)
    big = np.arange(262144, dtype=np.float32)
    framed = wire.encode("run1", 3, 7, "model", big)
    head, buffer = bytes(framed[0]), bytes(framed[1])
    for _ in range(2):
        assert np.array_equal(inbound.decode(3, head, [buffer])[1], big)
    assert _outcome(inbound.decode, 3, head, [buffer[:-4]]) == _outcome(wire.decode, head, [buffer[:-4]])
    assert _outcome(inbound.decode, 3, head, []) == _outcome(wire.decode, head, [])


@pytest.mark.parametrize("dtype", [">f4", ">i8", ">u2", ">f8", "<f4", "|u1"])
def test_an_array_of_any_byte_order_arrives_as_the_numbers_sent(dtype: str) -> None:
    """Arrays travel little-endian: a big-endian one (as files written elsewhere load) is converted on
    the way, twice in a row (the second through the shortcuts that remembered the first)."""
    x = np.arange(12).astype(dtype).reshape(3, 4)
    inbound = wire.Inbound()
    for _ in range(2):
        frames = wire.encode("run1", 3, 7, "model", x)
        for header, out in (wire.decode(bytes(frames[0]), []), inbound.decode(3, bytes(frames[0]), [])):
            np.testing.assert_array_equal(out, np.arange(12).reshape(3, 4))
            assert out.dtype.name == x.dtype.name and header == wire.Header("run1", 3, 7, "model")
    big = np.arange(wire.INLINE_MAX).astype(">f4")  # framed
    frames = wire.encode("run1", 3, 7, "model", {"x": big})
    np.testing.assert_array_equal(wire.decode(bytes(frames[0]), [bytes(f) for f in frames[1:]])[1]["x"],
                                  np.arange(wire.INLINE_MAX, dtype=np.float32))
