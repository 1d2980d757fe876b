/* How the agent reaches the broker: a broker URL, or an access file from
 * `ddnn broker --secure` (JSON: url, username, password, ca_file, cert_file, key_file). */
#ifndef DDNN_ACCESS_H
#define DDNN_ACCESS_H

#include <stddef.h>

#define DDNN_FIELD_MAX 1024

typedef struct {
    char url[DDNN_FIELD_MAX];
    char username[DDNN_FIELD_MAX], password[DDNN_FIELD_MAX];
    char ca_file[DDNN_FIELD_MAX], cert_file[DDNN_FIELD_MAX], key_file[DDNN_FIELD_MAX];
    int has_username, has_password;
    /* parsed from url */
    char host[256];
    int port, tls;
} ddnn_access;

/* Read an access file into `a`; relative certificate paths are taken relative to the file.
 * Returns 0, or -1 with a one-line reason in `err`. */
int ddnn_read_access(const char *path, ddnn_access *a, char *err, size_t err_len);

/* Parse `mqtt://host[:port]` or `mqtts://host[:port]` into a->host, a->port, a->tls.
 * Returns 0, or -1 with a one-line reason in `err`. */
int ddnn_parse_url(const char *url, ddnn_access *a, char *err, size_t err_len);

#endif
