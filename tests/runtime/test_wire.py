"""Frame format: round trips, exact sizes, and a clear FrameError for each kind of damage."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest

from ddnn.errors import DdnnError
from ddnn.runtime.wire import (
    MAGIC,
    MAX_MESSAGE_BYTES,
    VERSION,
    Encoding,
    ErrorFrame,
    FrameError,
    Reply,
    Request,
    Status,
    Tensor,
    decode_frame,
    decode_tensor,
    encode_answer,
    encode_frame,
    encode_tensor,
)

RNG = np.random.default_rng(0)


def request(*tensors: Tensor, **changes: object) -> Request:
    fields: dict[str, object] = {
        "request_id": 1,
        "model": "ddnn",
        "model_version": 3,
        "device_id": "dev0",
        "frame_id": 42,
        "section": 1,
        "tensors": tensors or (encode_tensor(np.ones(16), "bits"),),
    }
    return Request(**{**fields, **changes})  # type: ignore[arg-type]


def patched(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new) :]


# --- tensors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (0,), (1,), (13,), (2, 3), (1, 4, 5, 3)])
def test_float32_round_trip_is_exact(shape: tuple[int, ...]) -> None:
    x = RNG.standard_normal(shape).astype(np.float32)
    y = decode_tensor(encode_tensor(x, "float32"))
    assert y.dtype == np.float32 and y.shape == shape and y.flags.writeable
    np.testing.assert_array_equal(y, x)


def test_float16_round_trip_matches_numpy_rounding() -> None:
    x = RNG.standard_normal((3, 7)).astype(np.float32) * 100
    t = encode_tensor(x, Encoding.FLOAT16)
    assert len(t.payload) == 2 * x.size
    np.testing.assert_array_equal(decode_tensor(t), x.astype(np.float16).astype(np.float32))


def test_int8_round_trip_error_is_at_most_half_a_step() -> None:
    x = RNG.standard_normal((4, 9)).astype(np.float32) * 3
    t = encode_tensor(x, "int8")
    scale = struct.unpack_from("<f", t.payload)[0]
    assert len(t.payload) == 4 + x.size
    assert scale == pytest.approx(np.abs(x).max() / 127)
    assert np.abs(decode_tensor(t) - x).max() <= scale / 2 + 1e-6


def test_int8_of_zeros_decodes_to_zeros() -> None:
    np.testing.assert_array_equal(decode_tensor(encode_tensor(np.zeros(5), "int8")), 0.0)


@pytest.mark.parametrize("count", [1, 7, 8, 9, 64, 100])
def test_bits_round_trip_and_layout(count: int) -> None:
    x = np.where(RNG.standard_normal(count) >= 0, 1.0, -1.0)
    t = encode_tensor(x, "bits")
    assert len(t.payload) == math.ceil(count / 8)
    np.testing.assert_array_equal(decode_tensor(t), x.astype(np.float32))


def test_bits_are_msb_first_with_one_meaning_plus_one() -> None:
    t = encode_tensor(np.array([1, -1, -1, -1, -1, -1, -1, 1, 1]), "bits")
    assert t.payload == bytes([0b1000_0001, 0b1000_0000])


def test_encode_tensor_rejects_values_the_encoding_cannot_carry() -> None:
    with pytest.raises(DdnnError, match=r"binarize first"):
        encode_tensor(np.array([0.5, 1.0]), "bits")
    with pytest.raises(DdnnError, match="float16 range"):
        encode_tensor(np.array([1e6]), "float16")
    with pytest.raises(DdnnError, match="NaN"):
        encode_tensor(np.array([np.nan]), "int8")
    with pytest.raises(DdnnError, match="unit8"):
        encode_tensor(np.array([1.5]), "unit8")
    with pytest.raises(DdnnError, match="float32, float16, int8, bits, unit8"):
        encode_tensor(np.ones(2), "float64")
    with pytest.raises(DdnnError, match="numeric"):
        encode_tensor(np.array(["a"]), "float32")
    with pytest.raises(DdnnError, match="at most 8 dimensions"):
        encode_tensor(np.ones((1,) * 9), "float32")


def test_tensor_checks_payload_length_against_shape() -> None:
    with pytest.raises(FrameError, match="needs 24 payload bytes, got 20"):
        Tensor("x", Encoding.FLOAT32, (2, 3), bytes(20))


# --- frames ----------------------------------------------------------------------------------


def test_request_round_trip_with_several_encodings() -> None:
    tensors = [
        encode_tensor(RNG.standard_normal((2, 3)), enc, name=f"t{i}")
        for i, enc in enumerate(["float32", "float16", "int8"])
    ]
    tensors.append(encode_tensor(np.ones((2, 5)), "bits", name="feature/bin"))
    frame = request(*tensors, request_id=2**64 - 1, frame_id=2**64 - 1, section=255)
    assert decode_frame(encode_frame(frame)) == frame


def test_reply_round_trip() -> None:
    logits = encode_tensor(RNG.standard_normal(10), "float32", name="logits")
    frame = Reply(7, Status.DEGRADED, 3, 1, 0.25, 1.5, 0.1, ("dev2", "dev5"), (logits,))
    again = decode_frame(encode_frame(frame))
    assert again == frame
    assert (
        isinstance(again, Reply) and again.entropy == 0.25 and again.compute_ms == frame.compute_ms
    )


def test_the_servers_answer_bytes_equal_the_encoded_reply() -> None:
    # encode_answer skips the Reply object; its bytes must be what encode_frame makes of one
    cases = [
        (1, 0, 0, 0.0, 0.0, 0.0),
        (2**64 - 1, -1, 255, 1.0, 12.345678, 0.1),
        (np.int64(77), np.int64(9), 2, np.float32(0.3), 1e-7, 3.3e38),
    ]
    for rid, predicted, exit_index, entropy, queue_ms, compute_ms in cases:
        expected = encode_frame(
            Reply(rid, Status.OK, predicted, exit_index, entropy, queue_ms, compute_ms)
        )
        answer = encode_answer(rid, predicted, exit_index, entropy, queue_ms, compute_ms)
        assert answer == expected and decode_frame(answer) == decode_frame(expected)
    # whatever the server could get wrong is a FrameError, never a frame the decoder rejects
    for bad in [(5, 0, 256, 0.0, 0.0, 0.0), (0, 0, 0, 0.0, 0.0, 0.0), (5, 0, 0, 0.0, 1e39, 0.0)]:
        with pytest.raises(FrameError, match=f"request {bad[0]}"):
            encode_answer(*bad)


def test_error_round_trip_with_and_without_request_id() -> None:
    for request_id in (None, 9):
        frame = ErrorFrame(request_id, Status.UNKNOWN_MODEL, "modèle inconnu: ddnn v9")
        assert decode_frame(encode_frame(frame)) == frame


def test_floats_are_rounded_to_float32_on_construction() -> None:
    reply = Reply(1, Status.OK, 0, 0, 0.1)
    assert reply.entropy == float(np.float32(0.1))


def test_long_error_messages_are_truncated_not_refused() -> None:
    frame = ErrorFrame(1, Status.INTERNAL, "é" * 2000)
    assert len(frame.message.encode()) <= MAX_MESSAGE_BYTES
    assert decode_frame(encode_frame(frame)) == frame


def test_constructors_reject_bad_fields_with_fixes() -> None:
    with pytest.raises(DdnnError, match="device_id 'a/b' is invalid: use 1-64 letters"):
        request(device_id="a/b")
    with pytest.raises(DdnnError, match=r"request_id must be an integer in 1\.\."):
        request(request_id=0)
    with pytest.raises(DdnnError, match=r"tensors needs 1\.\.255 entries"):
        Request(1, "ddnn", 1, "dev0", 0, 1, ())
    with pytest.raises(DdnnError, match="error code"):
        ErrorFrame(1, Status.OK, "fine")
    with pytest.raises(DdnnError, match="float32"):
        Reply(1, Status.OK, 0, 0, 1e39)


# --- overhead --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "overhead"), [((256,), 42), ((1, 256), 46), ((4, 8, 8), 50), ((1, 4, 8, 8), 54)]
)
def test_request_overhead_matches_protocol_doc(shape: tuple[int, ...], overhead: int) -> None:
    """docs/protocol.md: 37 + len(name) + 4 * ndim bytes for model 'ddnn' and device 'dev0'."""
    for encoding in Encoding:
        t = encode_tensor(np.ones(shape), encoding)
        assert len(encode_frame(request(t))) - len(t.payload) == overhead


def test_typical_request_overhead_is_42_bytes() -> None:
    t = encode_tensor(np.ones(256), "bits")  # 256 binarized features: 32 payload bytes
    data = encode_frame(request(t))
    assert len(data) - len(t.payload) == 42
    assert len(data) == 74


def test_reply_and_error_sizes_match_protocol_doc() -> None:
    assert len(encode_frame(Reply(1, Status.OK, 3, 0, 0.5))) == 32
    assert len(encode_frame(Reply(1, Status.DEGRADED, 3, 0, 0.5, missing_devices=("dev1",)))) == 37
    assert len(encode_frame(ErrorFrame(None, Status.MALFORMED, "bad"))) == 15 + 3


# --- malformed input -------------------------------------------------------------------------

VALID = encode_frame(request(encode_tensor(np.ones(12), "bits")))
# Offsets of the request above (see docs/protocol.md): model at 23, device at 28,
# tensor name at 34, encoding 36, ndim 37, dims 38..41, payload 42..43.


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated frame: frame header needs 4 bytes"),
        (b"XY" + VALID[2:], "bad magic"),
        (patched(VALID, 2, b"\x01"), "unsupported protocol version 1"),
        (patched(VALID, 3, b"\x09"), "unknown frame kind 9"),
        (patched(VALID, 4, bytes(8)), "request_id must be an integer in 1"),
        (VALID + b"\x00", "1 trailing bytes after a complete request frame"),
        (VALID[:-1], "truncated frame: payload of tensor 'x'"),
        (patched(VALID, 24, b"\xff"), "model name is not valid UTF-8"),
        (patched(VALID, 29, b"d/v0"), "device_id 'd/v0' is invalid"),
        (patched(VALID, 36, b"\x07"), "unknown encoding of tensor 'x' 7"),
        (patched(VALID, 37, b"\x09"), "claims 9 dimensions; the limit is 8"),
        (patched(VALID, 38, b"\xff\xff\xff\xff"), "needs 536870912 bytes"),
        (patched(VALID, 43, b"\x01"), "non-zero padding bits"),
        (patched(VALID, 33, b"\x02"), "truncated frame: tensor 1 name length"),
        (patched(VALID, 33, b"\x00"), r"tensors needs 1\.\.255 entries"),
        (patched(encode_frame(Reply(1, Status.OK, 0, 0, 0.0)), 12, b"\x05"), "unknown status 5"),
        (MAGIC + bytes([VERSION, 3]) + struct.pack("<QBH", 0, 16, 2000), "exceeds 1024"),
        (MAGIC + bytes([VERSION, 3]) + struct.pack("<QBH", 0, 0, 0), "error frames need an error"),
    ],
)
def test_malformed_frames_raise_frame_error(data: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message):
        decode_frame(data)


def test_any_bytes_like_input_decodes_alike() -> None:
    """The reader works on the bytes, whatever buffer they arrive in (paho hands over bytes,
    applications may pass views of other item sizes)."""
    assert len(VALID) % 2 == 0  # so that a 16-bit view covers it exactly
    views = [
        bytearray(VALID),
        memoryview(VALID),
        memoryview(b"zz" + VALID)[2:],
        memoryview(VALID).cast("H"),
    ]
    assert all(decode_frame(v) == decode_frame(VALID) for v in views)


def test_an_empty_tensor_name_is_named_before_a_short_payload() -> None:
    no_name = VALID[:34] + b"\x00" + VALID[36:]  # name length 0, the name 'x' removed
    with pytest.raises(FrameError, match="tensor 0 has an empty name"):
        decode_frame(no_name[:-1])


def test_every_truncation_raises_frame_error() -> None:
    for end in range(len(VALID)):
        with pytest.raises(FrameError):
            decode_frame(VALID[:end])


@pytest.mark.parametrize("scale", [math.nan, math.inf, -1.0, 3e36])
def test_int8_scale_must_be_finite_and_not_overflow(scale: float) -> None:
    data = encode_frame(request(encode_tensor(np.ones(3), "int8")))
    scale_at = len(data) - 3 - 4
    with pytest.raises(FrameError, match="int8 scale"):
        decode_frame(patched(data, scale_at, struct.pack("<f", scale)))


def test_int8_minus_128_is_not_canonical() -> None:
    data = encode_frame(request(encode_tensor(np.ones(3), "int8")))
    with pytest.raises(FrameError, match="-128"):
        decode_frame(data[:-1] + b"\x80")


def test_int8_handles_the_float32_extremes() -> None:
    x = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, 1.0], dtype=np.float32)
    y = decode_tensor(encode_tensor(x, "int8"))
    assert np.all(np.isfinite(y)) and y[0] == pytest.approx(x[0], rel=1e-6)


def test_non_bytes_input_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="frames are bytes, got str"):
        decode_frame("DN")  # type: ignore[arg-type]


def test_frame_error_is_a_ddnn_error() -> None:
    assert issubclass(FrameError, DdnnError)


def test_unit8_carries_8_bit_pixels_exactly() -> None:
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = pixels.astype(np.float32) / 255.0
    t = encode_tensor(x, "unit8")
    assert len(t.payload) == 256
    np.testing.assert_array_equal(
        decode_tensor(decode_frame(encode_frame(request(t))).tensors[0]), x
    )
