"""Bit packing shared by the C generator, the engines and the tests.

Two layouts exist on purpose. On the wire, features are `numpy.packbits` of the C-order [C, h, w]
tensor (MSB first, bit 1 means +1), the format the upper tiers read. Inside the generated C,
binary activations are packed per pixel over channels in 32-bit words (LSB first, eBNN's layout),
so one XNOR + popcount covers 32 channels of a convolution tap.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 32


def words(n: int) -> int:
    """32-bit words needed for n bits."""
    return (n + WORD_BITS - 1) // WORD_BITS


def pack_words(bits: np.ndarray) -> np.ndarray:
    """bool [..., n] -> uint32 [..., words(n)]; bit j of word k is element 32 k + j (LSB first).
    The unused tail bits are 0, so XOR-ing two packed rows never counts them as mismatches."""
    bits = np.asarray(bits, dtype=bool)
    n = bits.shape[-1]
    padded = np.zeros((*bits.shape[:-1], words(n) * WORD_BITS), dtype=np.uint64)
    padded[..., :n] = bits
    grouped = padded.reshape(*bits.shape[:-1], words(n), WORD_BITS)  # [..., W, 32]
    weights = np.left_shift(np.uint64(1), np.arange(WORD_BITS, dtype=np.uint64))  # [32]
    return (grouped * weights).sum(axis=-1).astype(np.uint32)


def unpack_words(packed: np.ndarray, n: int) -> np.ndarray:
    """uint32 [..., words(n)] -> bool [..., n]; the inverse of pack_words."""
    packed = np.asarray(packed, dtype=np.uint32)
    shifts = np.arange(WORD_BITS, dtype=np.uint32)
    bits = (packed[..., None] >> shifts) & 1  # [..., W, 32]
    return bits.reshape(*packed.shape[:-1], -1)[..., :n].astype(bool)


def pack_hwc(x: np.ndarray) -> np.ndarray:
    """+-1 activations [C, H, W] -> uint32 [H * W * words(C)]: the C code's activation layout."""
    c, h, w = x.shape
    return pack_words(np.transpose(x >= 0, (1, 2, 0)).reshape(h * w, c)).reshape(-1)


def pack_features(x: np.ndarray) -> np.ndarray:
    """+-1 features [B, ...] -> uint8 [B, ceil(n / 8)]: packbits of each sample's C-order values,
    MSB first, 1 for +1 (0 maps to +1 as BinarySign does)."""
    x = np.asarray(x)
    return np.packbits(x.reshape(len(x), -1) >= 0, axis=1)


def unpack_features(packed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """uint8 [B, ceil(n / 8)] -> float32 +-1 [B, *shape]; the inverse of pack_features."""
    n = int(np.prod(shape))
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8), axis=1)[:, :n]
    return (bits.astype(np.float32) * 2 - 1).reshape(len(packed), *shape)
