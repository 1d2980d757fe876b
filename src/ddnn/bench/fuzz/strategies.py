"""The hypothesis strategies: valid frames, random bytes, bytes behind a valid header and
byte-level mutations of valid frames; one definition for the tests and `ddnn bench fuzz`."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from ddnn.runtime.wire import (
    MAGIC,
    VERSION,
    Encoding,
    ErrorFrame,
    Reply,
    Request,
    Status,
    Tensor,
    encode_frame,
    encode_tensor,
)

ALNUM = "abcXYZ019"
ids = st.builds(str.__add__, st.sampled_from(ALNUM), st.text(ALNUM + "._-", max_size=11))
u64 = st.integers(1, 2**64 - 1)
finite32 = st.floats(-1e6, 1e6, width=32)


@st.composite
def tensors(draw: st.DrawFn) -> Tensor:
    """Any encoding, up to 4 small dimensions (zero-sized ones too), any UTF-8 name."""
    encoding = draw(st.sampled_from(Encoding))
    shape = tuple(draw(st.lists(st.integers(0, 5), max_size=4)))
    # Values come from a drawn seed: the structure is what is being fuzzed, and this is fast.
    values = np.random.default_rng(draw(st.integers(0, 2**32))).standard_normal(shape) * 100
    if encoding is Encoding.BITS:
        values = np.where(values >= 0, 1.0, -1.0)
    if encoding is Encoding.UNIT8:
        values = 1 / (1 + np.exp(-values / 100))  # into [0, 1]
    name = draw(st.text(min_size=1, max_size=6))
    return encode_tensor(values, encoding, name=name)


requests = st.builds(
    Request,
    request_id=u64,
    model=ids,
    model_version=st.integers(0, 2**16 - 1),
    device_id=ids,
    frame_id=st.integers(0, 2**64 - 1),
    section=st.integers(0, 255),
    tensors=st.lists(tensors(), min_size=1, max_size=3).map(tuple),
)
replies = st.builds(
    Reply,
    request_id=u64,
    status=st.sampled_from(Status),
    predicted=st.integers(-(2**31), 2**31 - 1),
    exit_index=st.integers(0, 255),
    entropy=finite32,
    queue_ms=finite32,
    compute_ms=finite32,
    missing_devices=st.lists(ids, max_size=3).map(tuple),
    tensors=st.lists(tensors(), max_size=2).map(tuple),
)
errors = st.builds(
    ErrorFrame,
    request_id=st.none() | u64,
    code=st.sampled_from([s for s in Status if s.is_error]),
    message=st.text(max_size=40),
)
frames = st.one_of(requests, replies, errors)
random_bytes = st.binary(max_size=300)
# Random bodies behind a valid magic and version, so the fuzz reaches the kind readers.
headed_bytes = st.builds(
    lambda kind, body: MAGIC + bytes([VERSION, kind]) + body,
    st.sampled_from([1, 2, 3, 4]),
    random_bytes,
)

MUTATIONS = ("set", "flip", "insert", "delete", "truncate")
# (action, position, byte value, bit, inserted bytes, deleted count): drawn without knowing the
# frame, so the live fuzz can apply them to a request it builds later.
Mutation = tuple[str, int, int, int, bytes, int]
mutation_lists = st.lists(
    st.tuples(
        st.sampled_from(MUTATIONS),
        st.integers(0, 2**16),
        st.integers(0, 255),
        st.integers(0, 7),
        st.binary(min_size=1, max_size=8),
        st.integers(1, 8),
    ),
    min_size=1,
    max_size=3,
)


def mutate(data: bytes, mutations: list[Mutation]) -> bytes:
    """Apply byte-level edits; positions wrap around the (changing) length."""
    out = bytearray(data)
    for action, pos, value, bit, inserted, count in mutations:
        where = pos % (len(out) + 1)
        if action == "set" and where < len(out):
            out[where] = value
        elif action == "flip" and where < len(out):
            out[where] ^= 1 << bit
        elif action == "insert":
            out[where:where] = inserted
        elif action == "delete":
            del out[where : where + count]
        elif action == "truncate":
            del out[where:]
    return bytes(out)


mutated_frames = st.builds(mutate, frames.map(encode_frame), mutation_lists)
