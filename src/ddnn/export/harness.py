"""The fixed C files written beside the generated device code: the command-line harness and the
Makefile. The harness reads and writes the formats of fileformat.py, and can check the device's
results against golden ones on the device itself (no Python needed on a Raspberry Pi)."""

from __future__ import annotations

from ddnn.export.fileformat import INPUT_MAGIC, OUTPUT_MAGIC

# Tolerances of every comparison with PyTorch (verify, the harness's --check, the tests).
# Float32 sums in another order differ by a few ulps per layer, so logits (and float features)
# may differ by ~1e-6 of their scale; 1e-4 of max(1, max |reference|) leaves a wide margin while
# still catching any real error (a wrong weight, bit or padding moves logits by >= 1e-2).
LOGIT_RTOL = 1e-4
# The normalized entropy is in [0, 1]; the C code computes it in double, PyTorch in float32.
ENTROPY_ATOL = 1e-5
# Flags of the benchmark's build: onnxruntime picks the host's best kernels at run time too.
DEFAULT_CFLAGS = "-O3 -march=native"

# Monotonic nanoseconds and a qsort comparator for medians: shared by the harness and the bench.
TIMING_C = """\
static double now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
"""

HARNESS_C = f"""\
/* ddnn_harness: runs the generated device code on a file of inputs.
 *
 *   ddnn_harness INPUT OUTPUT            run every sample of INPUT, write the results to OUTPUT
 *   ddnn_harness --time N INPUT [IDLE]   time N runs of the first sample: print the median in ns,
 *                                        then each run's wall and thread CPU time in run order;
 *                                        IDLE: sleep IDLE x a run's CPU time after it (cold caches)
 *   ddnn_harness --check EXPECTED INPUT  compare with golden results; exit 1 on a mismatch
 *
 * Input file, little-endian: "{INPUT_MAGIC.decode()}", uint32 count, uint32 values per sample,
 * then count x values float32 (each sample C order [C, H, W], values in [0, 1]).
 * Output file, little-endian: "{OUTPUT_MAGIC.decode()}", uint32 count, uint32 logits L,
 * uint32 feature bytes F, uint32 flags (bit 0: packed binary features), then per sample:
 * int32 decision (class, or -1: offload), int32 argmax, float32 entropy, L float32 logits,
 * F bytes of features.
 * Exit status: 0 ok, 1 --check found a mismatch, 2 bad usage or malformed file.
 */
#define _POSIX_C_SOURCE 199309L
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ddnn_device.h"

#define LOGIT_RTOL {LOGIT_RTOL!r}
#define ENTROPY_ATOL {ENTROPY_ATOL!r}
#define RECORD (12 + 4 * DDNN_NUM_LOGITS + DDNN_FEATURE_BYTES)

static uint32_t get32(const unsigned char *p)
{{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}}

static void put32(unsigned char *p, uint32_t v)
{{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}}

static float getf(const unsigned char *p)
{{
    uint32_t u = get32(p);
    float f;
    memcpy(&f, &u, 4);
    return f;
}}

static void putf(unsigned char *p, float f)
{{
    uint32_t u;
    memcpy(&u, &f, 4);
    put32(p, u);
}}

static int fail(const char *path, const char *message)
{{
    fprintf(stderr, "ddnn_harness: %s: %s\\n", path, message);
    return 2;
}}

/* the whole file in a malloc'ed buffer (the harness may allocate; the device code does not) */
static unsigned char *slurp(const char *path, long *size)
{{
    FILE *fh = fopen(path, "rb");
    if (!fh) return NULL;
    unsigned char *data = NULL;
    if (fseek(fh, 0, SEEK_END) == 0 && (*size = ftell(fh)) >= 0 && fseek(fh, 0, SEEK_SET) == 0) {{
        data = malloc(*size > 0 ? (size_t)*size : 1);
        if (data && fread(data, 1, (size_t)*size, fh) != (size_t)*size) {{
            free(data);
            data = NULL;
        }}
    }}
    fclose(fh);
    return data;
}}

/* inputs of a checked input file as floats; NULL (after a message) when malformed */
static float *load_inputs(const char *path, long *count)
{{
    long size = 0;
    char message[256];
    unsigned char *data = slurp(path, &size);
    if (!data) {{
        fail(path, "cannot read the file");
        return NULL;
    }}
    float *x = NULL;
    if (size < 16) {{
        snprintf(message, sizeof message, "%ld bytes: too short for the 16-byte header", size);
        fail(path, message);
    }} else if (memcmp(data, "{INPUT_MAGIC.decode()}", 8) != 0) {{
        fail(path, "not a ddnn input file (bad magic: expected {INPUT_MAGIC.decode()})");
    }} else if (get32(data + 12) != DDNN_INPUT_SIZE) {{
        snprintf(message, sizeof message,
                 "samples have %lu values; this model needs %d (%d x %d x %d)",
                 (unsigned long)get32(data + 12), DDNN_INPUT_SIZE, DDNN_INPUT_CHANNELS,
                 DDNN_INPUT_HEIGHT, DDNN_INPUT_WIDTH);
        fail(path, message);
    }} else if (get32(data + 8) == 0) {{
        fail(path, "the file holds no samples");
    }} else if ((double)size != 16.0 + 4.0 * DDNN_INPUT_SIZE * get32(data + 8)) {{
        snprintf(message, sizeof message,
                 "%ld bytes, but the header announces %lu samples of %d float32 (%.0f bytes)",
                 size, (unsigned long)get32(data + 8), DDNN_INPUT_SIZE,
                 16.0 + 4.0 * DDNN_INPUT_SIZE * get32(data + 8));
        fail(path, message);
    }} else {{
        *count = (long)get32(data + 8);
        x = malloc((size_t)*count * DDNN_INPUT_SIZE * sizeof(float));
        if (!x) fail(path, "out of memory");
        for (long i = 0; x && i < *count * DDNN_INPUT_SIZE; i++) x[i] = getf(data + 16 + 4 * i);
    }}
    free(data);
    return x;
}}

/* one sample's results in the output file's record layout */
static void run_record(const float *input, unsigned char *rec)
{{
    float logits[DDNN_NUM_LOGITS + 1];
    float entropy = 0.0f;
    int argmax = -1;
    uint8_t *features = rec + 12 + 4 * DDNN_NUM_LOGITS;
    const int decision = ddnn_device_run(input, logits, &entropy, &argmax, features);
    put32(rec, (uint32_t)decision);
    put32(rec + 4, (uint32_t)argmax);
    putf(rec + 8, entropy);
    for (int i = 0; i < DDNN_NUM_LOGITS; i++) putf(rec + 12 + 4 * i, logits[i]);
}}

static int cmd_run(const char *in_path, const char *out_path)
{{
    long count = 0;
    float *x = load_inputs(in_path, &count);
    if (!x) return 2;
    unsigned char header[24], *rec = malloc(RECORD);
    FILE *fh = fopen(out_path, "wb");
    if (!fh || !rec) {{
        free(x);
        free(rec);
        if (fh) fclose(fh);
        return fail(out_path, "cannot write the file");
    }}
    memcpy(header, "{OUTPUT_MAGIC.decode()}", 8);
    put32(header + 8, (uint32_t)count);
    put32(header + 12, DDNN_NUM_LOGITS);
    put32(header + 16, DDNN_FEATURE_BYTES);
    put32(header + 20, DDNN_FEATURES_BINARY);
    int ok = fwrite(header, 1, 24, fh) == 24;
    for (long n = 0; ok && n < count; n++) {{
        memset(rec, 0, RECORD);
        run_record(x + n * DDNN_INPUT_SIZE, rec);
        ok = fwrite(rec, 1, RECORD, fh) == RECORD;
    }}
    ok = (fclose(fh) == 0) && ok;
    free(x);
    free(rec);
    return ok ? 0 : fail(out_path, "write failed");
}}

{TIMING_C}
static double cpu_ns(void)
{{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}}

static void idle_ns(double ns)
{{
    if (!(ns > 0)) return;
    struct timespec left = {{(time_t)(ns / 1e9), (long)fmod(ns, 1e9)}};
    while (nanosleep(&left, &left) == -1 && errno == EINTR) {{}}
}}

/* RUNS timed runs of the first sample after 20 warm-up ones; each run's wall time (monotonic)
 * and thread CPU time are kept in run order (the planner composes the two, planning/ctime.py) */
static int cmd_time(const char *runs_text, const char *in_path, const char *idle_text)
{{
    char *end = NULL;
    const long runs = strtol(runs_text, &end, 10);
    if (!end || *end || runs < 1) return fail(runs_text, "--time needs a positive number of runs");
    const double idle = strtod(idle_text, &end);
    if (!end || *end || !(idle >= 0)) return fail(idle_text, "IDLE must be a number >= 0");
    long count = 0;
    float *x = load_inputs(in_path, &count);
    if (!x) return 2;
    double *t = malloc(3 * (size_t)runs * sizeof(double));
    if (!t) {{
        free(x);
        return fail(in_path, "out of memory");
    }}
    double *wall = t + runs, *cpu = t + 2 * runs;
    static float logits[DDNN_NUM_LOGITS + 1];
    static uint8_t features[DDNN_FEATURE_BYTES];
    float entropy;
    int argmax;
    volatile int sink = 0;
    for (long i = 0; i < 20; i++) sink += ddnn_device_run(x, logits, &entropy, &argmax, features);
    for (long i = 0; i < runs; i++) {{
        const double c0 = cpu_ns(), t0 = now_ns();
        sink += ddnn_device_run(x, logits, &entropy, &argmax, features);
        wall[i] = t[i] = now_ns() - t0;
        cpu[i] = cpu_ns() - c0;
        idle_ns(idle * cpu[i]);
    }}
    qsort(t, (size_t)runs, sizeof(double), by_value);
    double mean = 0.0;
    for (long i = 0; i < runs; i++) mean += t[i] / (double)runs;
    printf("runs=%ld median_ns=%.0f min_ns=%.0f mean_ns=%.0f\\n", runs, t[runs / 2], t[0], mean);
    for (long i = 0; i < runs; i++) printf("run wall_ns=%.0f cpu_ns=%.0f\\n", wall[i], cpu[i]);
    free(t);
    free(x);
    (void)sink;
    return 0;
}}

static int close_enough(float a, float b, float scale, double rtol)
{{
    return fabs((double)a - (double)b) <= rtol * (scale > 1.0f ? scale : 1.0f);
}}

static int cmd_check(const char *expected_path, const char *in_path)
{{
    long size = 0, count = 0;
    unsigned char *exp = slurp(expected_path, &size);
    if (!exp) return fail(expected_path, "cannot read the file");
    if (size < 24 || memcmp(exp, "{OUTPUT_MAGIC.decode()}", 8) != 0 ||
        get32(exp + 12) != DDNN_NUM_LOGITS || get32(exp + 16) != DDNN_FEATURE_BYTES ||
        size != 24 + (long)get32(exp + 8) * RECORD) {{
        free(exp);
        return fail(expected_path, "not an output file of this model (regenerate it)");
    }}
    float *x = load_inputs(in_path, &count);
    if (!x || count != (long)get32(exp + 8)) {{
        free(exp);
        free(x);
        return x ? fail(in_path, "has not as many samples as the expected results") : 2;
    }}
    unsigned char rec[RECORD];
    long bad = 0;
    for (long n = 0; n < count; n++) {{
        const unsigned char *ref = exp + 24 + n * RECORD;
        memset(rec, 0, RECORD);
        run_record(x + n * DDNN_INPUT_SIZE, rec);
        float scale = 0.0f;
        for (int i = 0; i < DDNN_NUM_LOGITS; i++)
            if (fabsf(getf(ref + 12 + 4 * i)) > scale) scale = fabsf(getf(ref + 12 + 4 * i));
        int same = get32(rec) == get32(ref) && get32(rec + 4) == get32(ref + 4) &&
                   fabs((double)getf(rec + 8) - (double)getf(ref + 8)) <= ENTROPY_ATOL;
        for (int i = 0; i < DDNN_NUM_LOGITS; i++)
            same = same && close_enough(getf(rec + 12 + 4 * i), getf(ref + 12 + 4 * i), scale,
                                        LOGIT_RTOL);
        const unsigned char *fa = rec + 12 + 4 * DDNN_NUM_LOGITS;
        const unsigned char *fb = ref + 12 + 4 * DDNN_NUM_LOGITS;
        if (DDNN_FEATURES_BINARY) {{
            same = same && memcmp(fa, fb, DDNN_FEATURE_BYTES) == 0;
        }} else {{
            float fscale = 0.0f;
            for (int i = 0; i < DDNN_FEATURE_COUNT; i++)
                if (fabsf(getf(fb + 4 * i)) > fscale) fscale = fabsf(getf(fb + 4 * i));
            for (int i = 0; i < DDNN_FEATURE_COUNT; i++)
                same = same && close_enough(getf(fa + 4 * i), getf(fb + 4 * i), fscale, LOGIT_RTOL);
        }}
        if (!same) {{
            bad++;
            fprintf(stderr, "ddnn_harness: sample %ld differs from the expected results\\n", n);
        }}
    }}
    printf("%ld passed, %ld failed\\n", count - bad, bad);
    free(exp);
    free(x);
    return bad ? 1 : 0;
}}

static int usage(void)
{{
    fprintf(stderr,
            "usage: ddnn_harness INPUT OUTPUT\\n"
            "       ddnn_harness --time RUNS INPUT [IDLE]\\n"
            "       ddnn_harness --check EXPECTED INPUT\\n"
            "model: %s\\n",
            ddnn_device_model());
    return 2;
}}

int main(int argc, char **argv)
{{
    if (argc < 3 || argc > 5) return usage();
    if (argc >= 4 && strcmp(argv[1], "--time") == 0)
        return cmd_time(argv[2], argv[3], argc == 5 ? argv[4] : "0");
    if (argc == 4 && strcmp(argv[1], "--check") == 0) return cmd_check(argv[2], argv[3]);
    if (argc == 3 && argv[1][0] != '-') return cmd_run(argv[1], argv[2]);
    return usage();
}}
"""

MAKEFILE = """\
# Builds the generated device code: a shared library (for ctypes / your program) and the harness.
#   make                                   host build (CC from the environment, default cc)
#   make CFLAGS="-O3 -march=native"        tuned for the build machine (benchmarks)
#   make harness CC=aarch64-linux-gnu-gcc OUT=build-aarch64 LDFLAGS=-static
#                                          Raspberry Pi (64-bit OS) cross build; run it there or
#                                          under qemu-aarch64
# -std=c99 is always on: it also keeps GCC from fusing multiply-adds (-ffp-contract=off), so
# the results do not depend on the target having FMA.
CFLAGS ?= -O3
WARN = -Wall -Wextra -pedantic
ALL_CFLAGS = -std=c99 $(WARN) $(CFLAGS)
LDLIBS = -lm
OUT ?= .

all: lib harness

lib: $(OUT)/libddnn_device.so
harness: $(OUT)/ddnn_harness

$(OUT)/libddnn_device.so: ddnn_device.c ddnn_device.h
\tmkdir -p $(OUT)
\t$(CC) $(ALL_CFLAGS) -fPIC -shared -o $@ ddnn_device.c $(LDLIBS)

$(OUT)/ddnn_harness: harness.c ddnn_device.c ddnn_device.h
\tmkdir -p $(OUT)
\t$(CC) $(ALL_CFLAGS) -o $@ harness.c ddnn_device.c $(LDFLAGS) $(LDLIBS)

clean:
\trm -f $(OUT)/libddnn_device.so $(OUT)/ddnn_harness

.PHONY: all lib harness clean
"""
