/* The agent's inputs: ddnn input files, frames files, PGM/PPM images (ddnn_inputs.h). */
#define _POSIX_C_SOURCE 200809L
#include "ddnn_inputs.h"

#include <errno.h>
#include <string.h>

#include "ddnn_device.h"

static uint32_t u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#define FAIL(...) return snprintf(err, err_len, __VA_ARGS__), -1

int ddnn_open_inputs(ddnn_feed *f, const char *path, char *err, size_t err_len)
{
    f->inputs = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f->inputs) FAIL("%s: cannot open: %s", path, strerror(errno));
    uint8_t head[16];
    if (fread(head, 1, 16, f->inputs) != 16 || memcmp(head, "DDNNIN01", 8))
        FAIL("%s: not a ddnn input file (magic DDNNIN01, uint32 count, uint32 values)", path);
    f->count = u32le(head + 8);
    if (u32le(head + 12) != DDNN_INPUT_SIZE)
        FAIL("%s: %u values per sample, the model takes %d (%dx%dx%d)", path, u32le(head + 12),
             DDNN_INPUT_SIZE, DDNN_INPUT_CHANNELS, DDNN_INPUT_HEIGHT, DDNN_INPUT_WIDTH);
    if (f->count == 0) FAIL("%s: no samples", path);
    return 0;
}

int ddnn_open_frames(ddnn_feed *f, const char *path, char *err, size_t err_len)
{
    if (!(f->frames = fopen(path, "r"))) FAIL("%s: cannot open: %s", path, strerror(errno));
    return 0;
}

/* A binary PGM (P5, one channel) or PPM (P6, three) of the model's size; pixels / 255. */
static int image_pixels(FILE *f, const char *path, float *x, char *err, size_t err_len)
{
    char magic[3] = {0};
    int w, h, maxval, channels;
    if (fscanf(f, "%2s %d %d %d", magic, &w, &h, &maxval) != 4 || fgetc(f) == EOF)
        FAIL("%s: not a binary PGM/PPM image (P5 or P6)", path);
    channels = strcmp(magic, "P5") == 0 ? 1 : strcmp(magic, "P6") == 0 ? 3 : 0;
    if (!channels || maxval != 255) FAIL("%s: use a binary PGM (P5) or PPM (P6) with maxval 255", path);
    if (channels != DDNN_INPUT_CHANNELS || w != DDNN_INPUT_WIDTH || h != DDNN_INPUT_HEIGHT)
        FAIL("%s: image is %dx%d with %d channel(s), the model takes %dx%d with %d", path, h, w,
             channels, DDNN_INPUT_HEIGHT, DDNN_INPUT_WIDTH, DDNN_INPUT_CHANNELS);
    static uint8_t pixels[DDNN_INPUT_SIZE];
    if (fread(pixels, 1, DDNN_INPUT_SIZE, f) != DDNN_INPUT_SIZE) FAIL("%s: truncated image", path);
    for (int y = 0; y < h; y++) /* interleaved HWC -> C order [C, H, W] */
        for (int xx = 0; xx < w; xx++)
            for (int c = 0; c < channels; c++)
                x[(c * h + y) * w + xx] = (float)pixels[(y * w + xx) * channels + c] / 255.0f;
    return 0;
}

static int read_image(const char *path, float *x, char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (!f) FAIL("%s: cannot open: %s", path, strerror(errno));
    const int rc = image_pixels(f, path, x, err, err_len);
    fclose(f);
    return rc;
}

int ddnn_next_sample(ddnn_feed *f, float *x, uint64_t *frame_id, long *label, char *err, size_t err_len)
{
    if (f->images) {
        if (f->next_image >= f->n_images) return 0;
        if (read_image(f->images[f->next_image], x, err, err_len)) return -1;
        *frame_id = (uint64_t)f->next_image++;
        *label = -1;
        return 1;
    }
    if (f->read >= f->count) return 0;
    if (fread(x, sizeof(float), DDNN_INPUT_SIZE, f->inputs) != DDNN_INPUT_SIZE)
        FAIL("input: sample %u is truncated", f->read);
    *frame_id = f->read, *label = -1;
    if (f->frames) {
        unsigned long long id;
        if (fscanf(f->frames, "%llu %ld", &id, label) != 2)
            FAIL("frames file: line %u is not 'frame_id label'", f->read + 1);
        *frame_id = id;
    }
    f->read++;
    return 1;
}
