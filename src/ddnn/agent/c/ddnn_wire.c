/* The ddnn frames the device agent sends and receives; see ddnn_wire.h. */
#include "ddnn_wire.h"

#include <float.h>
#include <string.h>

static const struct {
    int code;
    const char *name;
} STATUS_NAMES[] = {DDNN_STATUS_TABLE};

const char *ddnn_status_name(int code)
{
    for (size_t i = 0; i < sizeof STATUS_NAMES / sizeof STATUS_NAMES[0]; i++)
        if (STATUS_NAMES[i].code == code) return STATUS_NAMES[i].name;
    return "UNKNOWN";
}

int ddnn_is_identifier(const char *s, size_t n)
{
    if (n < 1 || n > DDNN_ID_MAX) return 0;
    for (size_t i = 0; i < n; i++) {
        const char c = s[i];
        const int alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (i == 0 || (c != '.' && c != '_' && c != '-'))) return 0;
    }
    return 1;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

size_t ddnn_encode_request(uint8_t *buf, size_t cap, uint64_t request_id, uint64_t frame_id,
                           uint16_t model_version, uint8_t section, const char *model,
                           const char *device, uint8_t encoding, const uint32_t *shape, int ndim,
                           const uint8_t *payload, size_t payload_len)
{
    const size_t m = strlen(model), d = strlen(device);
    const size_t need = 26 + m + d + 1 + 1 + 2 + 4 * (size_t)ndim + payload_len;
    if (need > cap || m > 255 || d > 255) return 0;
    uint8_t *p = buf;
    *p++ = DDNN_MAGIC0;
    *p++ = DDNN_MAGIC1;
    *p++ = DDNN_WIRE_VERSION;
    *p++ = DDNN_KIND_REQUEST;
    put_u64(p, request_id), p += 8;
    put_u64(p, frame_id), p += 8;
    *p++ = (uint8_t)(model_version & 0xff);
    *p++ = (uint8_t)(model_version >> 8);
    *p++ = section;
    *p++ = (uint8_t)m, memcpy(p, model, m), p += m;
    *p++ = (uint8_t)d, memcpy(p, device, d), p += d;
    *p++ = 1; /* one tensor: x */
    *p++ = 1, *p++ = 'x';
    *p++ = encoding;
    *p++ = (uint8_t)ndim;
    for (int i = 0; i < ndim; i++) put_u32(p, shape[i]), p += 4;
    memcpy(p, payload, payload_len), p += payload_len;
    return (size_t)(p - buf);
}

/* -- decoding: a bounds-checked cursor ------------------------------------------------------ */

typedef struct {
    const uint8_t *p;
    size_t n, pos;
    const char *why;
} reader;

static const uint8_t *take(reader *r, size_t k, const char *what)
{
    if (r->why) return NULL;
    if (k > r->n - r->pos) {
        r->why = what;
        return NULL;
    }
    const uint8_t *at = r->p + r->pos;
    r->pos += k;
    return at;
}

static uint64_t le(const uint8_t *p, int bytes)
{
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static float f32(const uint8_t *p)
{
    const uint32_t bits = (uint32_t)le(p, 4);
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* Strict UTF-8 as Python decodes it: no overlong forms, no surrogates, nothing past U+10FFFF. */
static int valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        const uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (k > n - i - 1) return 0;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += k + 1;
    }
    return 1;
}

static int read_tensor(reader *r)
{
    const uint8_t *len = take(r, 1, "truncated tensor name");
    if (!len) return -1;
    const uint8_t *name = take(r, *len, "truncated tensor name");
    if (!name) return -1;
    if (!valid_utf8(name, *len)) return r->why = "tensor name is not valid UTF-8", -1;
    const uint8_t *head = take(r, 2, "truncated tensor header");
    if (!head) return -1;
    const int encoding = head[0], ndim = head[1];
    if (encoding < 1 || encoding > 5) return r->why = "unknown tensor encoding", -1;
    if (ndim > DDNN_MAX_NDIM) return r->why = "too many tensor dimensions", -1;
    const uint8_t *dims = take(r, 4 * (size_t)ndim, "truncated tensor shape");
    if (!dims) return -1;
    if (*len == 0) return r->why = "empty tensor name", -1;
    uint64_t count = 1;
    for (int i = 0; i < ndim; i++) {
        const uint64_t d = le(dims + 4 * i, 4);
        /* more values than bytes left can never fit: stop before the product overflows */
        count = (d == 0 || count == 0) ? 0 : (count > ((uint64_t)1 << 40) / d ? ((uint64_t)1 << 40) : count * d);
    }
    uint64_t size;
    switch (encoding) {
    case DDNN_ENC_FLOAT32: size = 4 * count; break;
    case DDNN_ENC_FLOAT16: size = 2 * count; break;
    case DDNN_ENC_INT8: size = 4 + count; break;
    case DDNN_ENC_BITS: size = (count + 7) / 8; break;
    default: size = count; break; /* unit8 */
    }
    if (size > r->n - r->pos) return r->why = "truncated tensor payload", -1;
    const uint8_t *payload = take(r, (size_t)size, "truncated tensor payload");
    if (encoding == DDNN_ENC_INT8) {
        const double scale = (double)f32(payload);
        if (!(scale >= 0.0 && scale <= (double)FLT_MAX / 127.0))
            return r->why = "int8 scale out of range", -1;
        if (memchr(payload + 4, 0x80, (size_t)count)) return r->why = "int8 value -128", -1;
    }
    const unsigned spare = (unsigned)((8 - count % 8) % 8);
    if (encoding == DDNN_ENC_BITS && spare && (payload[size - 1] & ((1u << spare) - 1)))
        return r->why = "non-zero padding bits", -1;
    return 0;
}

static int known_status(int code)
{
    return strcmp(ddnn_status_name(code), "UNKNOWN") != 0;
}

int ddnn_decode_answer(const uint8_t *p, size_t n, ddnn_answer *out, const char **why)
{
    reader r = {p, n, 0, NULL};
    const uint8_t *h = take(&r, 4, "truncated frame header");
    memset(out, 0, offsetof(ddnn_answer, missing));
    out->message[0] = '\0';
    if (h && (h[0] != DDNN_MAGIC0 || h[1] != DDNN_MAGIC1)) r.why = "bad magic";
    else if (h && h[2] != DDNN_WIRE_VERSION) r.why = "unsupported protocol version";
    else if (h && h[3] == DDNN_KIND_REPLY) {
        const uint8_t *f = take(&r, 26, "truncated reply header");
        if (f) {
            out->kind = DDNN_KIND_REPLY;
            out->request_id = le(f, 8);
            out->status = f[8];
            out->exit_index = f[9];
            out->predicted = (int32_t)(uint32_t)le(f + 10, 4);
            out->entropy = f32(f + 14);
            out->queue_ms = f32(f + 18);
            out->compute_ms = f32(f + 22);
            const uint8_t *count = take(&r, 1, "truncated missing device count");
            for (int i = 0; count && i < *count && !r.why; i++) {
                const uint8_t *len = take(&r, 1, "truncated missing device id");
                const uint8_t *id = len ? take(&r, *len, "truncated missing device id") : NULL;
                if (id && !ddnn_is_identifier((const char *)id, *len)) r.why = "bad missing device id";
                if (id && !r.why) {
                    memcpy(out->missing[i], id, *len);
                    out->missing[i][*len] = '\0';
                    out->n_missing = i + 1;
                }
            }
            const uint8_t *tensors = take(&r, 1, "truncated tensor count");
            for (int i = 0; tensors && i < *tensors && !r.why; i++) read_tensor(&r);
            if (!r.why && out->request_id == 0) r.why = "reply with request id 0";
            if (!r.why && !known_status(out->status)) r.why = "unknown reply status";
        }
    } else if (h && h[3] == DDNN_KIND_ERROR) {
        const uint8_t *f = take(&r, 11, "truncated error header");
        if (f) {
            out->kind = DDNN_KIND_ERROR;
            out->request_id = le(f, 8);
            out->status = f[8];
            const size_t len = (size_t)le(f + 9, 2);
            if (len > DDNN_MAX_MESSAGE_BYTES) r.why = "error message too long";
            const uint8_t *msg = take(&r, len, "truncated error message");
            if (msg && !valid_utf8(msg, len)) r.why = "error message is not valid UTF-8";
            if (msg && !r.why) {
                memcpy(out->message, msg, len);
                out->message[len] = '\0';
            }
            if (!r.why && !(known_status(out->status) && out->status >= DDNN_FIRST_ERROR))
                r.why = "unknown error code";
        }
    } else if (h) {
        r.why = h[3] == DDNN_KIND_REQUEST ? "a request, not an answer" : "unknown frame kind";
    }
    if (!r.why && r.pos != n) r.why = "trailing bytes after the frame";
    if (why) *why = r.why;
    return r.why ? -1 : 0;
}
