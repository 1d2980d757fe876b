/* The agent's JSON records (ddnn_records.h). */
#include "ddnn_records.h"

#include <stdlib.h>
#include <string.h>

static void json_text(FILE *out, const char *s)
{
    fputc('"', out);
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(out, "\\%c", c);
        else if (c < 0x20) fprintf(out, "\\u%04x", c);
        else fputc(c, out);
    }
    fputc('"', out);
}

/* The shortest decimal that reads back as the same double, as Python's json writes floats. */
static void json_double(FILE *out, double v)
{
    char text[40];
    for (int digits = 1; digits <= 17; digits++) {
        snprintf(text, sizeof text, "%.*g", digits, v);
        if (strtod(text, NULL) == v) break;
    }
    fputs(text, out);
    if (!strpbrk(text, ".eEn")) fputs(".0", out);
}

void ddnn_write_record(FILE *out, const ddnn_record *r, const char *device_id, const double *threshold)
{
    fprintf(out, "{\"device\": ");
    json_text(out, device_id);
    fprintf(out, ", \"frame_id\": %llu, \"predicted\": %d, \"exit_index\": %d, "
                 "\"local_predicted\": %d, \"offloaded\": %s, \"status\": \"%s\", ",
            (unsigned long long)r->frame_id, r->predicted, r->exit_index, r->local_predicted,
            r->offloaded ? "true" : "false", r->status);
    fprintf(out, "\"device_ms\": %.4f, \"comm_ms\": %.4f, \"server_ms\": %.4f, \"total_ms\": %.4f, "
                 "\"frame_bytes\": %zu, \"packet_bytes\": %zu, \"label\": %ld, \"missing\": [",
            r->device_ms, r->comm_ms, r->server_ms, r->total_ms, r->frame_bytes, r->packet_bytes,
            r->label);
    for (int i = 0; r->answer && i < r->answer->n_missing; i++) {
        if (i) fputs(", ", out);
        json_text(out, r->answer->missing[i]);
    }
    fprintf(out, "], \"message\": ");
    json_text(out, r->message);
    fprintf(out, ", \"threshold\": ");
    if (!threshold) fputs("null", out);
    else json_double(out, *threshold);
    fputs("}\n", out);
    fflush(out);
}
