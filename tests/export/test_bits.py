"""Packing: the wire format is numpy.packbits of the C-order values; the C layout is per-pixel
channel words, LSB first, with zero tails."""

import numpy as np
import pytest

from ddnn.export.bits import (
    pack_features,
    pack_hwc,
    pack_words,
    unpack_features,
    unpack_words,
    words,
)


@pytest.mark.parametrize("n", [1, 7, 8, 31, 32, 33, 64, 65, 100])
def test_pack_words_round_trip_and_zero_tail(n):
    rng = np.random.default_rng(n)
    bits = rng.random((3, n)) < 0.5
    packed = pack_words(bits)
    assert packed.shape == (3, words(n)) and packed.dtype == np.uint32
    assert np.array_equal(unpack_words(packed, n), bits)
    tail = words(n) * 32 - n
    if tail:  # unused high bits of the last word are 0, so XOR never counts them
        assert not np.any(packed[:, -1] >> np.uint32(32 - tail))


def test_pack_words_is_lsb_first():
    bits = np.zeros(40, bool)
    bits[[0, 5, 31, 32, 39]] = True
    assert pack_words(bits).tolist() == [(1 << 0) | (1 << 5) | (1 << 31), (1 << 0) | (1 << 7)]


def test_features_are_packbits_msb_first_in_c_order_and_zero_is_plus_one():
    x = -np.ones((1, 2, 3, 3), np.float32)  # 18 values -> 3 bytes
    x[0, 0, 0, 0] = 1.0  # flat index 0: the MSB of byte 0
    x[0, 1, 0, 0] = 0.0  # flat index 9: 0 counts as +1 (BinarySign maps 0 to +1)
    x[0, 1, 2, 2] = 1.0  # flat index 17: bit 6 of byte 2
    packed = pack_features(x)
    assert packed.tolist() == [[0b1000_0000, 0b0100_0000, 0b0100_0000]]
    assert np.array_equal(packed, np.packbits(x.reshape(1, -1) >= 0, axis=1))
    back = unpack_features(packed, (2, 3, 3))
    assert np.array_equal(back, np.where(x >= 0, 1.0, -1.0))


def test_hwc_layout_packs_channels_per_pixel():
    x = -np.ones((33, 2, 2), np.float32)
    x[0, 0, 1] = 1  # pixel 1, channel 0: bit 0 of word 2
    x[32, 1, 1] = 1  # pixel 3, channel 32: bit 0 of word 7
    packed = pack_hwc(x)
    assert packed.shape == (2 * 2 * 2,)
    assert packed.tolist() == [0, 0, 1, 0, 0, 0, 0, 1]
