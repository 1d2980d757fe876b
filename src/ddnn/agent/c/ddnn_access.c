/* Broker URLs and access files for the agent; see ddnn_access.h. The access file is a flat JSON
 * object of strings (or null), as ddnn.runtime.security.BrokerAccess writes it: this reader
 * takes exactly that and refuses anything else with one line. */
#define _POSIX_C_SOURCE 200809L
#include "ddnn_access.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>


#define FAIL(...) (snprintf(err, err_len, __VA_ARGS__), -1)

int ddnn_parse_url(const char *url, ddnn_access *a, char *err, size_t err_len)
{
    const char *rest;
    if (strncmp(url, "mqtt://", 7) == 0) rest = url + 7, a->tls = 0, a->port = 1883;
    else if (strncmp(url, "mqtts://", 8) == 0) rest = url + 8, a->tls = 1, a->port = 8883;
    else return FAIL("broker URL %s is not supported: use mqtt://host[:port] or mqtts://host[:port]", url);
    const char *colon = strrchr(rest, ':');
    const size_t host_len = colon ? (size_t)(colon - rest) : strlen(rest);
    if (host_len == 0 || host_len >= sizeof a->host || strchr(rest, '/') || strchr(rest, '@'))
        return FAIL("broker URL %s has no usable host: use mqtt://host[:port] or mqtts://host[:port]", url);
    memcpy(a->host, rest, host_len);
    a->host[host_len] = '\0';
    if (colon) {
        char *end;
        const long port = strtol(colon + 1, &end, 10);
        if (*end || end == colon + 1 || port < 1 || port > 65535)
            return FAIL("broker URL %s has a bad port: use a number in 1..65535", url);
        a->port = (int)port;
    }
    return 0;
}

/* A JSON string starting at *p (after the quote) into out; \uXXXX is refused (never written). */
static int json_string(const char **p, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *s = *p; *s; s++) {
        char c = *s;
        if (c == '"') {
            out[n] = '\0';
            *p = s + 1;
            return 0;
        }
        if ((unsigned char)c < 0x20) return -1;
        if (c == '\\') {
            c = *++s;
            if (c == 'n') c = '\n';
            else if (c == 't') c = '\t';
            else if (c == 'r') c = '\r';
            else if (c == 'b') c = '\b';
            else if (c == 'f') c = '\f';
            else if (c != '"' && c != '\\' && c != '/') return -1;
        }
        if (n + 1 >= cap) return -1;
        out[n++] = c;
    }
    return -1;
}

static void skip_space(const char **p)
{
    while (**p == ' ' || **p == '\n' || **p == '\t' || **p == '\r') (*p)++;
}

/* A relative path in the file is relative to the file's folder (as BrokerAccess.load does). */
static int resolve(const char *file, char *value, size_t cap)
{
    if (!value[0] || value[0] == '/') return 0;
    const char *slash = strrchr(file, '/');
    const size_t dir = slash ? (size_t)(slash - file) + 1 : 0;
    char joined[DDNN_FIELD_MAX];
    if (dir + strlen(value) + 1 > sizeof joined) return -1;
    memcpy(joined, file, dir);
    strcpy(joined + dir, value);
    if (strlen(joined) + 1 > cap) return -1;
    strcpy(value, joined);
    return 0;
}

int ddnn_read_access(const char *path, ddnn_access *a, char *err, size_t err_len)
{
    static char text[65536];
    FILE *f = fopen(path, "rb");
    if (!f) return FAIL("access file %s does not exist or is not readable", path);
    const size_t len = fread(text, 1, sizeof text - 1, f);
    const int big = !feof(f);
    fclose(f);
    if (big) return FAIL("access file %s is larger than 64 KiB: not an access file", path);
    text[len] = '\0';
    memset(a, 0, sizeof *a);
    const char *p = text;
    skip_space(&p);
    if (*p++ != '{') return FAIL("access file %s is not a JSON object", path);
    skip_space(&p);
    int first = 1;
    while (*p != '}') {
        char key[64], value[DDNN_FIELD_MAX];
        if (!first && *p++ != ',') return FAIL("access file %s is not JSON the agent can read (expected ',')", path);
        first = 0;
        skip_space(&p);
        if (*p++ != '"' || json_string(&p, key, sizeof key))
            return FAIL("access file %s is not JSON the agent can read (a key)", path);
        skip_space(&p);
        if (*p++ != ':') return FAIL("access file %s is not JSON the agent can read (expected ':')", path);
        skip_space(&p);
        int null = 0;
        if (strncmp(p, "null", 4) == 0) null = 1, p += 4, value[0] = '\0';
        else if (*p++ != '"' || json_string(&p, value, sizeof value))
            return FAIL("access file %s: the value of %s is not a string the agent can read "
                        "(plain JSON strings, no \\u escapes)", path, key);
        skip_space(&p);
        struct {
            const char *name;
            char *dest;
            int *given;
        } fields[] = {
            {"url", a->url, NULL}, {"username", a->username, &a->has_username},
            {"password", a->password, &a->has_password}, {"ca_file", a->ca_file, NULL},
            {"cert_file", a->cert_file, NULL}, {"key_file", a->key_file, NULL},
            {"share_group", NULL, NULL},
        };
        size_t k = 0;
        while (k < sizeof fields / sizeof fields[0] && strcmp(fields[k].name, key)) k++;
        if (k == sizeof fields / sizeof fields[0])
            return FAIL("access file %s has the unknown key %s: the agent reads url, username, "
                        "password, ca_file, cert_file, key_file", path, key);
        if (fields[k].dest) strcpy(fields[k].dest, value);
        if (fields[k].given) *fields[k].given = !null;
    }
    p++;
    skip_space(&p);
    if (*p) return FAIL("access file %s has text after its JSON object", path);
    if (!a->url[0]) return FAIL("access file %s has no url", path);
    if (a->has_password && !a->has_username)
        return FAIL("access file %s has a password but no username", path);
    char *files[] = {a->ca_file, a->cert_file, a->key_file};
    for (int i = 0; i < 3; i++) {
        struct stat st;
        if (resolve(path, files[i], DDNN_FIELD_MAX) || (files[i][0] && stat(files[i], &st)))
            return FAIL("access file %s names %s, which does not exist: copy it beside the "
                        "access file", path, files[i]);
    }
    return 0;
}
