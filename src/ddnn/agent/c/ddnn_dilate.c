/* An emulated device's speed (ddnn_dilate.h). */
#define _POSIX_C_SOURCE 200809L
#include "ddnn_dilate.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "ddnn_agent_config.h"

double ddnn_slowdown_from_env(void)
{
    const char *text = getenv(DDNN_AGENT_SLOWDOWN_ENV);
    char *end;
    if (!text || !*text) return 0.0;
    const double v = strtod(text, &end);
    if (*end || end == text || !isfinite(v)) {
        fprintf(stderr, "ddnn_agent: ignoring %s=\"%s\": not a number\n", DDNN_AGENT_SLOWDOWN_ENV, text);
        return 0.0;
    }
    return v > 1 ? v : 0.0;
}

double ddnn_cpu_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void ddnn_dilate(double slowdown, double cpu_start)
{
    if (slowdown > 1) ddnn_sleep_s((ddnn_cpu_s() - cpu_start) * (slowdown - 1));
}

void ddnn_sleep_s(double s)
{
    if (!(s > 0)) return;
    struct timespec left = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&left, &left) == -1 && errno == EINTR) {}
}
