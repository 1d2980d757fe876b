/* The agent's output: one JSON line per sample with the Python device's record fields. */
#ifndef DDNN_RECORDS_H
#define DDNN_RECORDS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ddnn_agent_config.h"
#include "ddnn_wire.h"

typedef struct {
    uint64_t frame_id;
    long label;
    int predicted, exit_index, local_predicted, offloaded;
    const char *status;
    double device_ms, comm_ms, server_ms, total_ms;
    size_t frame_bytes, packet_bytes;
    const ddnn_answer *answer; /* missing devices, when answered */
    char message[DDNN_MAX_MESSAGE_BYTES + 64];
} ddnn_record;

/* Write `r` of device `device_id` as one JSON line and flush; `threshold` NULL writes null
 * (no local exit decided the sample). */
void ddnn_write_record(FILE *out, const ddnn_record *r, const char *device_id, const double *threshold);

#endif
