/* ddnn wire protocol (docs/protocol.md) for the C device agent: encode a request, decode the
 * answer (a reply or an error frame). The decoder is strict like the Python one: it accepts
 * only bytes the Python encoder could have produced and never reads outside the buffer.
 * Constants (magic, version, kinds, codes) come from ddnn_agent_config.h, generated from
 * ddnn.runtime so that they cannot drift from the Python side. */
#ifndef DDNN_WIRE_H
#define DDNN_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "ddnn_agent_config.h"

#define DDNN_ID_MAX 64 /* bytes of a model name or device id */

typedef struct {
    int kind;            /* DDNN_KIND_REPLY or DDNN_KIND_ERROR */
    uint64_t request_id; /* 0: an error frame whose request id could not be read */
    int status;          /* reply status, or the error code (>= 16) */
    int exit_index;
    int32_t predicted;
    float entropy, queue_ms, compute_ms;
    int n_missing;
    char missing[255][DDNN_ID_MAX + 1];
    char message[DDNN_MAX_MESSAGE_BYTES + 1];
} ddnn_answer;

/* 1 when s is 1..64 of [A-Za-z0-9._-] starting with a letter or digit (topic-safe). */
int ddnn_is_identifier(const char *s, size_t n);

/* The request frame with one tensor `x` (shape `ndim` dims) into buf; returns its length, or
 * 0 when it does not fit `cap`. */
size_t ddnn_encode_request(uint8_t *buf, size_t cap, uint64_t request_id, uint64_t frame_id,
                           uint16_t model_version, uint8_t section, const char *model,
                           const char *device, uint8_t encoding, const uint32_t *shape, int ndim,
                           const uint8_t *payload, size_t payload_len);

/* Decode a reply or error frame; returns 0, or -1 with `why` (static text) set. */
int ddnn_decode_answer(const uint8_t *p, size_t n, ddnn_answer *out, const char **why);

/* The status or error code's name (OK, OVERLOADED, ...). */
const char *ddnn_status_name(int code);

#endif
