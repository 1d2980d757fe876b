/* An emulated device's speed, as the Python device has it (ddnn.emulation.cpu `dilated`): when
 * `ddnn run --device-profile` starts the agent, the environment variable named by
 * DDNN_AGENT_SLOWDOWN_ENV holds host speed / device speed, and the agent sleeps (slowdown - 1)
 * x the CPU time each inference used, so the inference takes the profile's time. */
#ifndef DDNN_DILATE_H
#define DDNN_DILATE_H

/* The slowdown asked for in the environment; 0 when there is none, it is <= 1 (a device as fast
 * as the host) or it is not a number (one warning line on stderr). */
double ddnn_slowdown_from_env(void);

/* This thread's CPU time in seconds (the agent is one thread, so it is also the process's). */
double ddnn_cpu_s(void);

/* Sleep (slowdown - 1) x the CPU time used since `cpu_start` (ddnn_cpu_s); no-op below 1. */
void ddnn_dilate(double slowdown, double cpu_start);

/* Sleep `s` seconds, whatever signals interrupt it. */
void ddnn_sleep_s(double s);

#endif
