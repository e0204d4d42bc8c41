"""Wire format: arrays travel as raw frames beside a msgpack header; garbage is refused, never unpickled."""

from __future__ import annotations

import msgpack
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


def test_torch_tensors_come_back_as_tensors_including_bfloat16() -> None:
    t = torch.randn(3, 4)
    b = torch.randn(5).to(torch.bfloat16)
    _, out = roundtrip({"t": t, "b": b, "nc": t.t()})
    assert isinstance(out["t"], torch.Tensor) and torch.equal(out["t"], t)
    assert out["b"].dtype == torch.bfloat16 and torch.equal(out["b"], b)
    assert torch.equal(out["nc"], t.t())  # non-contiguous input is sent contiguous


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
