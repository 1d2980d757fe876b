"""C99 text for one lowered op: its constant arrays and one static function.

Every op function has the signature `void op_N(const ddnn_word *in, ddnn_word *out,
ddnn_word *tmp)`; `ddnn_word` is a union of float, int32 and uint32, so the static ping-pong
buffers hold float activations, integer accumulators and packed bits without pointer casts.
Loop bounds are literals, so the compiler can unroll and vectorize. Used by the device source
and by the benchmark, which times single ops.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ddnn.errors import DdnnError
from ddnn.export.bits import pack_words, words
from ddnn.export.ir import Affine, Conv, Dense, MaxPool, Normalize, Op, Pad, Unpack

PRELUDE = """\
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef union {
    float f;
    int32_t i;
    uint32_t u;
} ddnn_word;

#if defined(__POPCNT__) || defined(__aarch64__) || defined(__ARM_NEON)
/* a popcount instruction exists: GCC and Clang emit it */
#define ddnn_popcount(x) __builtin_popcount(x)
#else
/* SWAR popcount: inline (no libgcc call) and vectorizable across channels */
static inline int ddnn_popcount(uint32_t v)
{
    v = v - ((v >> 1) & 0x55555555u);
    v = (v & 0x33333333u) + ((v >> 2) & 0x33333333u);
    return (int)((((v + (v >> 4)) & 0x0F0F0F0Fu) * 0x01010101u) >> 24);
}
#endif

/* bit i of a packed array of 32-bit words, LSB first */
#define DDNN_BIT(a, i) ((((a)[(i) >> 5]) >> ((i) & 31)) & 1u)
"""


def c_float(x: float) -> str:
    """A float32 literal that round-trips exactly (9 significant digits)."""
    value = float(np.float32(x))
    if not np.isfinite(value):
        raise DdnnError(f"non-finite weight {value}: the model is broken; retrain or fix it")
    text = f"{value:.9g}"
    if not any(ch in text for ch in ".e"):
        text += ".0"
    return text + "f"


def c_array(ctype: str, name: str, values: np.ndarray) -> str:
    """`static const ctype name[n] = {...};`, eight values a line."""
    flat = np.asarray(values).reshape(-1)
    if ctype == "float":
        items = [c_float(v) for v in flat]
    elif ctype == "uint32_t":
        items = [f"0x{int(v):08x}u" for v in flat]
    else:
        items = [str(int(v)) for v in flat]
    lines = [", ".join(items[i : i + 8]) for i in range(0, len(items), 8)] or ["0"]
    body = ",\n    ".join(lines)
    return f"static const {ctype} {name}[{max(len(flat), 1)}] = {{\n    {body}\n}};\n"


@dataclass
class COp:
    """The C text of one op plus what the memory report counts."""

    constants: str
    function: str
    weight_bytes: int
    scratch_words: int


def tensor_words(shape: tuple[int, int, int], kind: str) -> int:
    """32-bit words a tensor occupies in the C buffers."""
    c, h, w = shape
    return h * w * words(c) if kind == "bits" else c * h * w


def emit_op(op: Op, n: int) -> COp:
    """C constants and function `op_<n>` for op `op`."""
    if isinstance(op, Normalize):
        return _normalize(op, n)
    if isinstance(op, Pad):
        return _pad(op, n)
    if isinstance(op, MaxPool):
        return _maxpool(op, n)
    if isinstance(op, Unpack):
        return _unpack(op, n)
    if isinstance(op, Conv):
        return _conv(op, n)
    if isinstance(op, Dense):
        return _dense(op, n)
    raise AssertionError(f"no C for {type(op).__name__}")  # pragma: no cover


def _signature(n: int) -> str:
    return (
        f"static void op_{n}(const ddnn_word *restrict in, ddnn_word *restrict out, "
        "ddnn_word *restrict tmp)"
    )


def _normalize(op: Normalize, n: int) -> COp:
    size = int(np.prod(op.in_shape))
    fn = f"""\
/* input normalization: (x - mean) / std, as model.normalize */
{_signature(n)}
{{
    (void)tmp;
    for (int i = 0; i < {size}; i++) out[i].f = (in[i].f - {c_float(op.mean)}) / {c_float(op.std)};
}}
"""
    return COp("", fn, 0, 0)


def _pad(op: Pad, n: int) -> COp:
    c, h, w = op.in_shape
    _, ho, wo = op.out_shape
    p = op.pad
    fn = f"""\
/* zero padding by {p} */
{_signature(n)}
{{
    (void)tmp;
    for (int c = 0; c < {c}; c++)
        for (int y = 0; y < {ho}; y++)
            for (int x = 0; x < {wo}; x++) {{
                const int inside = y >= {p} && y < {h + p} && x >= {p} && x < {w + p};
                out[(c * {ho} + y) * {wo} + x].f =
                    inside ? in[(c * {h} + y - {p}) * {w} + x - {p}].f : 0.0f;
            }}
}}
"""
    return COp("", fn, 0, 0)


def _maxpool(op: MaxPool, n: int) -> COp:
    c, h, w = op.in_shape
    _, ho, wo = op.out_shape
    k = op.size
    if op.in_kind == "bits":  # max of +-1 values is the OR of their bits
        wpp = words(c)
        fn = f"""\
/* {k}x{k} max pooling of packed +-1 values: OR of the bits */
{_signature(n)}
{{
    (void)tmp;
    for (int py = 0; py < {ho}; py++)
        for (int px = 0; px < {wo}; px++)
            for (int j = 0; j < {wpp}; j++) {{
                uint32_t m = 0;
                for (int dy = 0; dy < {k}; dy++)
                    for (int dx = 0; dx < {k}; dx++)
                        m |= in[((py * {k} + dy) * {w} + px * {k} + dx) * {wpp} + j].u;
                out[(py * {wo} + px) * {wpp} + j].u = m;
            }}
}}
"""
        return COp("", fn, 0, 0)
    fn = f"""\
/* {k}x{k} max pooling */
{_signature(n)}
{{
    (void)tmp;
    for (int c = 0; c < {c}; c++)
        for (int py = 0; py < {ho}; py++)
            for (int px = 0; px < {wo}; px++) {{
                const ddnn_word *a = in + (c * {h} + py * {k}) * {w} + px * {k};
                float m = a[0].f;
                for (int dy = 0; dy < {k}; dy++)
                    for (int dx = 0; dx < {k}; dx++)
                        if (a[dy * {w} + dx].f > m) m = a[dy * {w} + dx].f;
                out[(c * {ho} + py) * {wo} + px].f = m;
            }}
}}
"""
    return COp("", fn, 0, 0)


def _unpack(op: Unpack, n: int) -> COp:
    c, h, w = op.in_shape
    wpp = words(c)
    fn = f"""\
/* packed +-1 values -> float [C, H, W] */
{_signature(n)}
{{
    (void)tmp;
    for (int c = 0; c < {c}; c++)
        for (int y = 0; y < {h}; y++)
            for (int x = 0; x < {w}; x++)
                out[(c * {h} + y) * {w} + x].f =
                    DDNN_BIT(&in[(y * {w} + x) * {wpp}].u, c) ? 1.0f : -1.0f;
}}
"""
    return COp("", fn, 0, 0)


# -- convolution and dense layers ----------------------------------------------------------------


def _constants(op: Affine, n: int, weight_bits: np.ndarray | None) -> tuple[str, int]:
    """Constant arrays of an affine op and their bytes."""
    parts: list[str] = []
    size = 0
    if op.binary:
        assert weight_bits is not None
        parts.append(c_array("uint32_t", f"WB_{n}", weight_bits))
        size += 4 * weight_bits.size
    else:
        parts.append(c_array("float", f"W_{n}", op.weight))
        size += 4 * op.weight.size
    for name, arr, ctype in (
        ("B", op.bias, "float"),
        ("S", op.scale, "float"),
        ("T", op.shift, "float"),
        ("LO", op.lo, "int32_t"),
        ("HI", op.hi, "int32_t"),
    ):
        if arr is not None and not (name in ("S", "T") and op.lo is not None):
            parts.append(c_array(ctype, f"{name}_{n}", arr))
            size += 4 * arr.size
    return "".join(parts), size


def _finish(op: Affine, n: int, value: str, is_int: bool, out_index: str, pixel: str) -> str:
    """C statement storing accumulator `value` of channel `o` through batch norm and activation;
    `out_index` is the float output index, `pixel` the output pixel for packed bits."""
    if op.out_kind == "bits":
        wpp = words(op.out_shape[0])
        if op.lo is not None:
            cond = f"{value} >= LO_{n}[o] && {value} <= HI_{n}[o]"
        else:
            cond = f"{_scaled(op, n, value, is_int)} >= 0.0f"
        # branchless: the sign of a trained layer is a coin flip the branch predictor loses
        return f"out[({pixel}) * {wpp} + (o >> 5)].u |= (uint32_t)({cond}) << (o & 31);"
    u = _scaled(op, n, value, is_int)
    act = {"relu": f"({u} > 0.0f ? {u} : 0.0f)", "tanh": f"tanhf({u})", "none": u}[op.act]
    if op.act == "relu" and u != value:
        return f"const float u = {u}; out[{out_index}].f = u > 0.0f ? u : 0.0f;"
    return f"out[{out_index}].f = {act};"


def _scaled(op: Affine, n: int, value: str, is_int: bool) -> str:
    v = f"(float){value}" if is_int else value
    return f"{v} * S_{n}[o] + T_{n}[o]" if op.scale is not None else v


def _conv(op: Conv, n: int) -> COp:
    """Convolution, pooling, batch norm and activation in one pass over the pooled output (rows
    for float input, pixels for binary input): the convolution is computed at the positions of
    the pooling windows, maxed and stored through the activation, so no accumulator image is
    ever stored."""
    c_in, h, w = op.in_shape
    c_out = op.out_shape[0]
    hc, wc = op.conv_shape
    _, ho, wo = op.out_shape
    k = op.kernel
    scratch = 0
    bits: np.ndarray | None
    if op.integer:  # [k, k, O, words(I)]: per tap, every channel's word run back to back
        bits = pack_words(np.transpose(op.weight >= 0, (2, 3, 0, 1)))
    else:  # [O, I, k, k]; tmp holds the im2col of one pooled output row
        bits = pack_words((op.weight >= 0).reshape(-1)) if op.binary else None
        scratch = im2col_words(op)
    constants, size = _constants(op, n, bits)
    clear = (
        f"    for (int j = 0; j < {ho * wo * words(c_out)}; j++) out[j].u = 0;\n"
        if op.out_kind == "bits"
        else ""
    )
    kind_text = "binary" if op.binary else "float"
    fn = f"""\
/* {kind_text} conv {c_in}x{h}x{w} -> {c_out}x{hc}x{wc} (k{k} s{op.stride} \
p{op.padding}), max pool {op.pool} -> {c_out}x{ho}x{wo}, {op.act} */
{_signature(n)}
{{
{clear}{_conv_bits(op, n) if op.integer else _conv_float(op, n)}
}}
"""
    return COp(constants, fn, size, scratch)


CHANNEL_BLOCK = 4  # output channels sharing one pass over the gathered inputs
POSITION_ALIGN = 8  # gathered rows are padded to a multiple of the SIMD width: no scalar tail


def im2col_words(op: Conv) -> int:
    """Scratch of a float-input convolution: the gathered inputs of one pooled output row."""
    return op.in_shape[0] * op.kernel**2 * _positions(op)


def _positions(op: Conv) -> int:
    npos = op.pool * op.pool * op.out_shape[2]
    return -(-npos // POSITION_ALIGN) * POSITION_ALIGN


def _conv_float(op: Conv, n: int) -> str:
    """Float input, one pooled output row at a time: gather the inputs of its conv positions
    (im2col) into tmp [taps, positions], zeros for the padding; then, for blocks of output
    channels, multiply-adds over whole position rows, which the compiler vectorizes."""
    c_in, h, w = op.in_shape
    c_out = op.out_shape[0]
    k, s, p, pk = op.kernel, op.stride, op.padding, op.pool
    nx = op.out_shape[2] * pk  # conv columns that pooling keeps
    npos = _positions(op)
    main = c_out - c_out % CHANNEL_BLOCK
    blocks = (_channel_block(op, n, CHANNEL_BLOCK, 0, main) if main else "") + (
        _channel_block(op, n, 1, main, c_out) if main < c_out else ""
    )
    return f"""\
    for (int py = 0; py < {op.out_shape[1]}; py++) {{
        for (int c = 0; c < {c_in}; c++)
            for (int kh = 0; kh < {k}; kh++)
                for (int kw = 0; kw < {k}; kw++) {{
                    ddnn_word *restrict col = tmp + ((c * {k} + kh) * {k} + kw) * {npos};
                    for (int j = {pk * nx}; j < {npos}; j++) col[j].f = 0.0f;
                    for (int dy = 0; dy < {pk}; dy++) {{
                        const int iy = (py * {pk} + dy) * {s} + kh - {p};
                        for (int ox = 0; ox < {nx}; ox++) {{
                            const int ix = ox * {s} + kw - {p};
                            const int inside = iy >= 0 && iy < {h} && ix >= 0 && ix < {w};
                            col[dy * {nx} + ox].f = inside ? in[(c * {h} + iy) * {w} + ix].f : 0.0f;
                        }}
                    }}
                }}{blocks}
    }}"""


def _channel_block(op: Conv, n: int, block: int, start: int, stop: int) -> str:
    """Output channels start..stop, `block` at a time, for one pooled output row `py`."""
    c_in, _, _ = op.in_shape
    _, ho, wo = op.out_shape
    k, pk = op.kernel, op.pool
    taps, nx, npos = c_in * k * k, wo * op.pool, _positions(op)
    index = f"(o0 + q) * {taps} + t"
    weight = f"(DDNN_BIT(WB_{n}, {index}) ? 1.0f : -1.0f)" if op.binary else f"W_{n}[{index}]"
    init = "0.0f" if op.bias is None else f"B_{n}[o]"
    store = _finish(op, n, "v", False, f"(o * {ho} + py) * {wo} + px", f"py * {wo} + px")
    weights = " ".join(f"const float w{q} = wq[{q}];" for q in range(block))
    update = " ".join(f"acc[{q}][j] += w{q} * x;" for q in range(block))
    return f"""
        for (int o0 = {start}; o0 < {stop}; o0 += {block}) {{
            float acc[{block}][{npos}];
            for (int q = 0; q < {block}; q++) {{
                const int o = o0 + q;
                (void)o;
                for (int j = 0; j < {npos}; j++) acc[q][j] = {init};
            }}
            for (int t = 0; t < {taps}; t++) {{
                float wq[{block}];
                for (int q = 0; q < {block}; q++) wq[q] = {weight};
                {weights}
                const ddnn_word *restrict col = tmp + t * {npos};
                for (int j = 0; j < {npos}; j++) {{
                    const float x = col[j].f;
                    {update}
                }}
            }}
            for (int q = 0; q < {block}; q++) {{
                const int o = o0 + q;
                for (int px = 0; px < {wo}; px++) {{
                    const float *a = &acc[q][px * {pk}];
                    float v = a[0];
                    for (int dy = 0; dy < {pk}; dy++)
                        for (int dx = 0; dx < {pk}; dx++)
                            if (a[dy * {nx} + dx] > v) v = a[dy * {nx} + dx];
                    {store}
                }}
            }}
        }}"""


def _conv_bits(op: Conv, n: int) -> str:
    """Binary input: y = taps - 2 * popcount(x XOR w) over the taps inside the image. Zero-padded
    taps are skipped, not counted as -1, because PyTorch pads with 0."""
    c_in, h, w = op.in_shape
    c_out = op.out_shape[0]
    _, ho, wo = op.out_shape
    k, s, p, pk = op.kernel, op.stride, op.padding, op.pool
    wpp = words(c_in)
    store = _finish(op, n, "best[o]", True, f"(o * {ho} + py) * {wo} + px", f"py * {wo} + px")
    return f"""\
    (void)tmp;
    for (int py = 0; py < {ho}; py++)
        for (int px = 0; px < {wo}; px++) {{
            int32_t best[{c_out}];
            for (int o = 0; o < {c_out}; o++) best[o] = {-(c_in * k * k) - 1};
            for (int dy = 0; dy < {pk}; dy++)
                for (int dx = 0; dx < {pk}; dx++) {{
                    const int oy = py * {pk} + dy, ox = px * {pk} + dx;
                    int32_t mism[{c_out}];
                    int32_t taps = 0;
                    for (int o = 0; o < {c_out}; o++) mism[o] = 0;
                    for (int kh = 0; kh < {k}; kh++) {{
                        const int iy = oy * {s} + kh - {p};
                        if (iy < 0 || iy >= {h}) continue;
                        for (int kw = 0; kw < {k}; kw++) {{
                            const int ix = ox * {s} + kw - {p};
                            if (ix < 0 || ix >= {w}) continue;
                            const ddnn_word *x = in + (iy * {w} + ix) * {wpp};
                            const uint32_t *wt = WB_{n} + (kh * {k} + kw) * {c_out * wpp};
                            taps += {c_in};
                            for (int o = 0; o < {c_out}; o++)
                                for (int j = 0; j < {wpp}; j++)
                                    mism[o] += ddnn_popcount(x[j].u ^ wt[o * {wpp} + j]);
                        }}
                    }}
                    for (int o = 0; o < {c_out}; o++)
                        if (taps - 2 * mism[o] > best[o]) best[o] = taps - 2 * mism[o];
                }}
            for (int o = 0; o < {c_out}; o++) {{
                {store}
            }}
        }}"""


def _dense(op: Dense, n: int) -> COp:
    c, h, w = op.in_shape
    size_in = c * h * w
    c_out = op.out_shape[0]
    store = _finish(op, n, "v", op.integer, "o", "0")
    clear = f"    for (int j = 0; j < {words(c_out)}; j++) out[j].u = 0;\n"
    bits: np.ndarray | None = None
    if op.integer:  # weight rows in the input's layout: [O, H, W, words(C)]
        wt = op.weight.reshape(c_out, c, h, w)
        bits = pack_words(np.transpose(wt >= 0, (0, 2, 3, 1)))
        row = h * w * words(c)
        body = f"""\
        const uint32_t *wt = WB_{n} + o * {row};
        int32_t m = 0;
        for (int j = 0; j < {row}; j++) m += ddnn_popcount(in[j].u ^ wt[j]);
        const int32_t v = {size_in} - 2 * m;"""
    else:
        if op.binary:
            bits = pack_words((op.weight >= 0).reshape(-1))
        term = (
            f"(DDNN_BIT(WB_{n}, o * {size_in} + j) ? in[j].f : -in[j].f)"
            if op.binary
            else f"W_{n}[o * {size_in} + j] * in[j].f"
        )
        init = "0.0f" if op.bias is None else f"B_{n}[o]"
        body = f"""\
        float v = {init};
        for (int j = 0; j < {size_in}; j++) v += {term};"""
    constants, nbytes = _constants(op, n, bits)
    kind = "binary" if op.binary else "float"
    fn = f"""\
/* {kind} dense {size_in} -> {c_out}, {op.act} */
{_signature(n)}
{{
    (void)tmp;
{clear if op.out_kind == "bits" else ""}    for (int o = 0; o < {c_out}; o++) {{
{body}
        {store}
    }}
}}
"""
    return COp(constants, fn, nbytes, 0)
