/* ddnn_agent: a complete ddnn end device in C99. It reads inputs, runs the generated device
 * section (ddnn_device.c), answers locally when the exit is confident, otherwise offloads over
 * MQTT (libmosquitto, QoS 1, the wire format of docs/protocol.md) and waits for the answer
 * until a deadline, falling back to the local answer marked degraded, as the Python device
 * (ddnn.runtime.device) does. One JSON record per sample, with the Python device's fields.
 * Emulated (`ddnn run --device-profile`), its inference is dilated to the profile's speed as
 * the Python device's is (ddnn_dilate.h).
 *
 *   ddnn_agent (--broker URL | --auth FILE) [--id ID] [--deadline-ms MS] [--threshold T]
 *              [--mode device+server|server-only] [--rate R] [--records FILE]
 *              (--inputs FILE|- [--frames FILE] | IMAGE.pgm|.ppm ...)
 *
 * One thread: the MQTT loop runs while the agent waits (for an answer, the pacing, the start
 * signal), so nothing is shared and there are no locks. Exit status: 0 done, 1 cannot connect
 * or the broker refused, 2 bad usage or input. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "ddnn_access.h"
#include "ddnn_agent_config.h"
#include "ddnn_device.h"
#include "ddnn_dilate.h"
#include "ddnn_inputs.h"
#include "ddnn_records.h"
#include "ddnn_wire.h"

#define KEEPALIVE_S 30
#define CONNECT_TIMEOUT_S 5.0
#define MAX_PACKET (1 << 20) /* announced in CONNECT, as every ddnn client does */
#define FRAME_CAP (DDNN_INPUT_SIZE * 4 + 1024)

typedef struct {
    /* configuration */
    const char *device_id, *url, *records, *ready_file, *start_file;
    double deadline_s, rate, threshold, slowdown; /* slowdown: 0, or emulated (ddnn_dilate.h) */
    int server_only, has_threshold;
    char request_topic[256], reply_topic[256];
    /* connection state */
    struct mosquitto *m;
    int socket_up, connected, refused, subscribed, closing;
    double next_retry, backoff;
    /* the one request waiting for its answer */
    uint64_t next_id, waiting_id;
    int answered;
    ddnn_answer answer;
    /* counters */
    long dropped_replies, deadline_misses, unrouted, publish_refused, malformed;
    int silence_reported;
} agent_t;

static agent_t A;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void vsay(const char *fmt, va_list ap)
{
    fprintf(stderr, "ddnn_agent: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
}

static int die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsay(fmt, ap);
    va_end(ap);
    exit(code);
}

/* -- MQTT callbacks: record what happened, never block ------------------------------------- */

static void on_connect(struct mosquitto *m, void *obj, int rc, int flags, const mosquitto_property *p)
{
    (void)obj, (void)flags, (void)p;
    if (rc != 0) {
        A.refused = rc;
        return;
    }
    A.connected = 1;
    A.backoff = 0.25;
    mosquitto_subscribe_v5(m, NULL, A.reply_topic, 1, 0, NULL); /* every CONNACK: no session */
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *granted,
                         const mosquitto_property *p)
{
    (void)m, (void)obj, (void)mid, (void)p;
    if (n >= 1 && granted[0] <= 2) A.subscribed = 1;
    else say("%s: the broker refused the subscription to %s", A.device_id, A.reply_topic);
}

static void on_disconnect(struct mosquitto *m, void *obj, int rc, const mosquitto_property *p)
{
    (void)m, (void)obj, (void)p;
    if (A.connected && !A.closing)
        say("%s: lost the connection to %s (%s); reconnecting", A.device_id, A.url,
            rc == MOSQ_ERR_CONN_LOST ? "connection lost" : mosquitto_reason_string(rc));
    A.connected = A.socket_up = 0;
    A.next_retry = now_s() + A.backoff;
}

static void on_publish(struct mosquitto *m, void *obj, int mid, int reason, const mosquitto_property *p)
{
    (void)m, (void)obj, (void)mid, (void)p;
    if (reason == MQTT_RC_NO_MATCHING_SUBSCRIBERS) A.unrouted++;
    else if (reason >= 128) A.publish_refused++;
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *p)
{
    (void)m, (void)obj, (void)p;
    static ddnn_answer got;
    const char *why = NULL;
    if (ddnn_decode_answer(msg->payload, (size_t)msg->payloadlen, &got, &why)) {
        if (++A.malformed <= 5) /* a flood of junk must not flood the log */
            say("%s: malformed reply on %s: %s%s", A.device_id, msg->topic, why,
                A.malformed == 5 ? " (no more of these are logged)" : "");
        return;
    }
    if (got.request_id == 0) {
        say("%s: error without request id: %s", A.device_id, got.message);
        return;
    }
    /* the first answer wins; a late (past the deadline) or second one is dropped */
    if (A.waiting_id == 0 || got.request_id != A.waiting_id || A.answered) {
        A.dropped_replies++;
        return;
    }
    A.answer = got;
    A.answered = 1;
}

/* Run the MQTT loop for up to `timeout` seconds; reconnect with back-off when the link is down
 * (0.25 s doubling to 8 s, as the Python transport). */
static void pump(double timeout)
{
    if (!A.socket_up) {
        const double t = now_s();
        if (t >= A.next_retry) {
            if (mosquitto_reconnect(A.m) == MOSQ_ERR_SUCCESS) {
                A.socket_up = 1;
                return;
            }
            A.next_retry = t + A.backoff;
            A.backoff = A.backoff * 2 > 8.0 ? 8.0 : A.backoff * 2;
        }
        const double wait = A.next_retry - now_s();
        ddnn_sleep_s(wait < timeout ? wait : timeout);
        return;
    }
    const int ms = timeout <= 0 ? 0 : (int)ceil(timeout * 1000);
    const int rc = mosquitto_loop(A.m, ms, 1);
    if (rc != MOSQ_ERR_SUCCESS && A.socket_up) {
        if (A.connected && !A.closing)
            say("%s: lost the connection to %s (%s); reconnecting", A.device_id, A.url,
                mosquitto_strerror(rc));
        A.connected = A.socket_up = 0;
        if (A.next_retry < now_s()) A.next_retry = now_s() + A.backoff;
    }
}

static void connect_broker(const ddnn_access *acc)
{
    char err[512];
    A.m = mosquitto_new(NULL, true, NULL);
    if (!A.m) die(1, "cannot create an MQTT client: %s", strerror(errno));
    mosquitto_int_option(A.m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_int_option(A.m, MOSQ_OPT_TCP_NODELAY, 1);
    mosquitto_connect_v5_callback_set(A.m, on_connect);
    mosquitto_disconnect_v5_callback_set(A.m, on_disconnect);
    mosquitto_subscribe_v5_callback_set(A.m, on_subscribe);
    mosquitto_publish_v5_callback_set(A.m, on_publish);
    mosquitto_message_v5_callback_set(A.m, on_message);
    if (acc->has_username)
        mosquitto_username_pw_set(A.m, acc->username, acc->has_password ? acc->password : NULL);
    if (acc->tls) {
        const char *ca = acc->ca_file[0] ? acc->ca_file : NULL;
        const int rc = mosquitto_tls_set(A.m, ca, ca ? NULL : "/etc/ssl/certs",
                                         acc->cert_file[0] ? acc->cert_file : NULL,
                                         acc->key_file[0] ? acc->key_file : NULL, NULL);
        if (rc != MOSQ_ERR_SUCCESS)
            die(2, "cannot use the TLS files of %s: %s", A.url, mosquitto_strerror(rc));
    }
    mosquitto_property *props = NULL;
    mosquitto_property_add_int32(&props, MQTT_PROP_MAXIMUM_PACKET_SIZE, MAX_PACKET);
    const int rc = mosquitto_connect_bind_v5(A.m, acc->host, acc->port, KEEPALIVE_S, NULL, props);
    mosquitto_property_free_all(&props);
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(err, sizeof err, "%s", rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
        die(1, "cannot connect to the MQTT broker at %s: %s; is it running (ddnn broker), and "
               "is the URL right?", A.url, err);
    }
    A.socket_up = 1;
    A.backoff = 0.25;
    const double until = now_s() + CONNECT_TIMEOUT_S;
    while (!(A.connected && A.subscribed) && !A.refused && now_s() < until && A.socket_up)
        pump(0.05);
    if (A.refused)
        die(1, "the MQTT broker at %s refused the connection: %s", A.url,
            mosquitto_reason_string(A.refused));
    if (!(A.connected && A.subscribed))
        die(1, "no CONNACK/SUBACK within %.0f s from %s: is it an MQTT 5 broker, and does it "
               "need TLS (mqtts://)?", CONNECT_TIMEOUT_S, A.url);
}

/* -- one sample ----------------------------------------------------------------------------- */

static size_t packet_size(size_t topic_len, size_t payload_len)
{
    const size_t remaining = 2 + topic_len + 2 + 1 + payload_len; /* MQTT v5 QoS-1 PUBLISH */
    size_t varint = 1;
    for (size_t v = remaining; v >= 128; v >>= 7) varint++;
    return 1 + varint + remaining;
}

/* No usable answer: the local exit's answer marked degraded, or none ("lost", "error"). */
static void fallback(ddnn_record *r, int local, const char *status_if_none, double t0, const char *why)
{
    r->total_ms = (now_s() - t0) * 1000;
    r->comm_ms = r->total_ms - r->device_ms;
    r->server_ms = 0.0;
    snprintf(r->message, sizeof r->message, "%s", why);
    if (!local) {
        r->predicted = r->exit_index = r->local_predicted = -1;
        r->status = status_if_none;
        return;
    }
    r->predicted = r->local_predicted; /* -1 when a Big-Little exit says "other" */
    r->exit_index = 0;
    r->status = "degraded";
}

static void offload(ddnn_record *r, const uint8_t *payload, size_t payload_len, uint8_t encoding,
                    const uint32_t *shape, uint8_t section, int local, double t0)
{
    static uint8_t frame[FRAME_CAP];
    const uint64_t rid = A.next_id++;
    const size_t len = ddnn_encode_request(frame, sizeof frame, rid, r->frame_id, DDNN_AGENT_VERSION,
                                           section, DDNN_AGENT_MODEL, A.device_id, encoding, shape,
                                           4, payload, payload_len);
    const char *topic = section ? A.request_topic : A.request_topic + strlen(A.request_topic) + 1;
    r->offloaded = 1;
    r->frame_bytes = len;
    r->packet_bytes = packet_size(strlen(topic), len);
    A.waiting_id = rid;
    A.answered = 0;
    const int rc = mosquitto_publish_v5(A.m, NULL, topic, (int)len, frame, 1, false, NULL);
    if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) { /* NO_CONN: queued, sent on reconnect */
        A.waiting_id = 0;
        fallback(r, local, "lost", t0, mosquitto_strerror(rc));
        return;
    }
    for (double left; !A.answered && (left = A.deadline_s - (now_s() - t0)) > 0;)
        pump(left);
    A.waiting_id = 0;
    if (!A.answered) {
        A.deadline_misses++;
        if (!A.silence_reported) {
            A.silence_reported = 1;
            say("no answer from a server on %s within %.0f ms: is `ddnn serve` running? "
                "answering locally, marked degraded", A.url, A.deadline_s * 1000);
        }
        fallback(r, local, "lost", t0, "deadline passed");
        return;
    }
    A.silence_reported = 0;
    const ddnn_answer *a = &A.answer;
    char why[DDNN_MAX_MESSAGE_BYTES + 64];
    if (a->kind == DDNN_KIND_ERROR) {
        snprintf(why, sizeof why, "%s: %s", ddnn_status_name(a->status), a->message);
        fallback(r, local, "error", t0, why);
        return;
    }
    if (a->status == DDNN_STATUS_FEATURES) {
        fallback(r, local, "error", t0, "the edge asked for features twice");
        return;
    }
    r->total_ms = (now_s() - t0) * 1000;
    r->server_ms = (double)a->queue_ms + (double)a->compute_ms;
    r->comm_ms = r->total_ms - r->device_ms - r->server_ms;
    if (r->comm_ms < 0) r->comm_ms = 0;
    r->predicted = a->predicted;
    r->exit_index = a->exit_index;
    r->status = a->status == DDNN_STATUS_DEGRADED ? "degraded" : "ok";
    r->answer = a;
}

static void infer(ddnn_record *r, const float *x)
{
    static uint8_t features[DDNN_FEATURE_BYTES + DDNN_INPUT_SIZE];
    float logits[DDNN_NUM_LOGITS > 0 ? DDNN_NUM_LOGITS : 1], entropy;
    int argmax;
    const double t0 = now_s();
    r->message[0] = '\0';
    r->answer = NULL;
    r->offloaded = 0;
    r->frame_bytes = r->packet_bytes = 0;
    r->device_ms = r->comm_ms = r->server_ms = 0.0;
    r->local_predicted = -1;
    const uint32_t view[4] = {1, DDNN_INPUT_CHANNELS, DDNN_INPUT_HEIGHT, DDNN_INPUT_WIDTH};
    if (A.server_only) { /* the whole sample upstream as unit8 pixels, nothing runs here */
        for (int i = 0; i < DDNN_INPUT_SIZE; i++) features[i] = (uint8_t)nearbyintf(x[i] * 255.0f);
        offload(r, features, DDNN_INPUT_SIZE, DDNN_ENC_UNIT8, view, 0, 0, t0);
        return;
    }
    const double cpu0 = ddnn_cpu_s();
    const int decision = ddnn_device_run(x, logits, &entropy, &argmax, features);
    ddnn_dilate(A.slowdown, cpu0); /* as slow as an emulated device's profile, if any */
    r->device_ms = (now_s() - t0) * 1000;
    r->local_predicted = ddnn_device_class(argmax);
    if (decision != DDNN_OFFLOAD) {
        r->predicted = decision, r->exit_index = 0, r->status = "ok";
        r->total_ms = r->device_ms;
        return;
    }
    static const uint32_t feature_shape[4] = DDNN_AGENT_FEATURE_SHAPE;
    if (DDNN_AGENT_RAW_UPSTREAM) { /* Big-Little: the big net upstream sees the raw view */
        for (int i = 0; i < DDNN_INPUT_SIZE; i++) features[i] = (uint8_t)nearbyintf(x[i] * 255.0f);
        offload(r, features, DDNN_INPUT_SIZE, DDNN_ENC_UNIT8, view, 1, 1, t0);
    } else {
        offload(r, features, DDNN_FEATURE_BYTES,
                DDNN_FEATURES_BINARY ? DDNN_ENC_BITS : DDNN_ENC_FLOAT32, feature_shape, 1, 1, t0);
    }
}

/* -- main ----------------------------------------------------------------------------------- */

static uint64_t first_request_id(void)
{
    uint64_t v = 0; /* random 40 bits: ids stay unique over restarts, as the Python device's */
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&v, 1, 5, f) != 5) v = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    if (f) fclose(f);
    return (v & 0xffffffffffULL) + 1;
}

static double number(const char *flag, const char *text, double low)
{
    char *end;
    const double v = strtod(text, &end);
    if (*end || end == text || !(v >= low) || !isfinite(v)) die(2, "%s must be a number >= %g, got %s", flag, low, text);
    return v;
}

int main(int argc, char **argv)
{
    const char *auth = NULL, *inputs = NULL, *frames = NULL, *mode = DDNN_AGENT_MODE;
    int id_given = 0;
    ddnn_feed feed = {0};
    A.device_id = DDNN_AGENT_DEVICE_ID;
    A.deadline_s = DDNN_AGENT_DEADLINE_MS / 1000.0;
    A.threshold = DDNN_AGENT_THRESHOLD;
    A.slowdown = ddnn_slowdown_from_env(); /* set by `ddnn run --device-profile` */
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (arg[0] != '-' || strcmp(arg, "-") == 0) {
            feed.images = argv + i, feed.n_images = argc - i;
            break;
        }
        if (!val) die(2, "%s needs a value (usage: see the top of ddnn_agent.c or docs/agent.md)", arg);
        i++;
        if (!strcmp(arg, "--broker")) A.url = val;
        else if (!strcmp(arg, "--auth")) auth = val;
        else if (!strcmp(arg, "--id")) A.device_id = val, id_given = 1;
        else if (!strcmp(arg, "--deadline-ms")) A.deadline_s = number(arg, val, 1e-3) / 1000.0;
        else if (!strcmp(arg, "--threshold")) A.threshold = number(arg, val, 0.0), A.has_threshold = 1;
        else if (!strcmp(arg, "--mode")) mode = val;
        else if (!strcmp(arg, "--rate")) A.rate = number(arg, val, 0.0);
        else if (!strcmp(arg, "--records")) A.records = val;
        else if (!strcmp(arg, "--inputs")) inputs = val;
        else if (!strcmp(arg, "--frames")) frames = val;
        else if (!strcmp(arg, "--ready-file")) A.ready_file = val;
        else if (!strcmp(arg, "--start-file")) A.start_file = val;
        else die(2, "unknown option %s (usage: see docs/agent.md)", arg);
    }
    if (A.threshold > 1.0) die(2, "--threshold must be in [0, 1], got %g", A.threshold);
    if (!strcmp(mode, "server-only")) A.server_only = 1;
    else if (strcmp(mode, "device+server")) die(2, "--mode must be device+server or server-only, got %s", mode);
    if (A.has_threshold) ddnn_device_set_threshold((float)A.threshold);
    if (!!inputs == !!feed.images) die(2, "give --inputs FILE (or - for stdin) or image files, one of them");

    ddnn_access acc;
    char err[1024];
    if (inputs && ddnn_open_inputs(&feed, inputs, err, sizeof err)) die(2, "%s", err);
    if (frames && ddnn_open_frames(&feed, frames, err, sizeof err)) die(2, "%s", err);
    memset(&acc, 0, sizeof acc);
    if (auth && ddnn_read_access(auth, &acc, err, sizeof err)) die(2, "%s", err);
    if (auth && acc.has_username && id_given && strcmp(acc.username, A.device_id))
        die(2, "--id %s differs from the access file's identity %s", A.device_id, acc.username);
    if (auth && acc.has_username) A.device_id = strdup(acc.username);
    if (!ddnn_is_identifier(A.device_id, strlen(A.device_id)))
        die(2, "--id %s is not an identifier (1-64 letters, digits, '.', '_' or '-')", A.device_id);
    if (!A.url) A.url = auth ? acc.url : NULL;
    if (!A.url) die(2, "give --broker mqtt://host:port or --auth FILE");
    if (ddnn_parse_url(A.url, &acc, err, sizeof err)) die(2, "%s", err);
    if (!acc.tls && (acc.ca_file[0] || acc.cert_file[0]))
        die(2, "%s: certificates are given but the URL is not mqtts://", A.url);
    if (!!acc.cert_file[0] != !!acc.key_file[0])
        die(2, "%s: a client certificate needs both cert_file and key_file", auth ? auth : A.url);
    snprintf(A.request_topic, sizeof A.request_topic, "%s%s", DDNN_AGENT_REQUEST_PREFIX, A.device_id);
    /* the server-only topic (section 0) right after the first one's terminating NUL */
    snprintf(A.request_topic + strlen(A.request_topic) + 1,
             sizeof A.request_topic - strlen(A.request_topic) - 1, "%s%s",
             DDNN_AGENT_RAW_REQUEST_PREFIX, A.device_id);
    snprintf(A.reply_topic, sizeof A.reply_topic, "%s%s", DDNN_AGENT_REPLY_PREFIX, A.device_id);
    FILE *out = stdout;
    if (A.records && !(out = fopen(A.records, "w"))) die(2, "%s: cannot write: %s", A.records, strerror(errno));

    mosquitto_lib_init();
    A.next_id = first_request_id();
    connect_broker(&acc);
    if (A.ready_file) {
        FILE *f = fopen(A.ready_file, "w");
        if (f) fputs("ready\n", f), fclose(f);
    }
    if (A.start_file) { /* devices that fuse their views start together */
        const double until = now_s() + 300;
        FILE *f;
        for (; !(f = fopen(A.start_file, "r")); pump(0.01))
            if (now_s() > until) die(1, "no start signal (%s) within 300 s", A.start_file);
        fclose(f);
    }
    static float x[DDNN_INPUT_SIZE];
    ddnn_record rec;
    const double start = now_s();
    long n = 0;
    for (int got; (got = ddnn_next_sample(&feed, x, &rec.frame_id, &rec.label, err, sizeof err));) {
        if (got < 0) die(2, "%s", err);
        for (double left; A.rate > 0 && (left = start + n / A.rate - now_s()) > 0;)
            pump(left); /* paced: sample n leaves at start + n / rate */
        infer(&rec, x);
        ddnn_write_record(out, &rec, A.device_id, A.server_only || DDNN_AGENT_FINAL ? NULL : &A.threshold);
        n++;
    }
    A.closing = 1;
    for (const double until = now_s() + 0.2; mosquitto_want_write(A.m) && now_s() < until;)
        pump(0.01); /* let the last PUBACKs go out */
    if (A.unrouted)
        fprintf(stderr, "%ld request(s) from %s reached no subscriber: no server or edge serves "
                        "this model on that broker (start `ddnn serve` with it)\n", A.unrouted, A.device_id);
    if (A.publish_refused)
        fprintf(stderr, "%ld request(s) from %s were refused by the broker: this identity may not "
                        "publish there (the device id must match the access file's username)\n",
                A.publish_refused, A.device_id);
    say("%s: %ld sample(s), %ld deadline miss(es), %ld late or duplicate repl(ies) dropped, "
        "%ld malformed", A.device_id, n, A.deadline_misses, A.dropped_replies, A.malformed);
    mosquitto_disconnect(A.m);
    mosquitto_destroy(A.m);
    mosquitto_lib_cleanup();
    if (out != stdout) fclose(out);
    return 0;
}
