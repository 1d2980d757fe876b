/* Where the agent's samples come from: a ddnn input file (DDNNIN01, or stdin) with an optional
 * frames file of `frame_id label` lines, or binary PGM/PPM images of the model's size. */
#ifndef DDNN_INPUTS_H
#define DDNN_INPUTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef struct {
    FILE *inputs, *frames;
    char **images;
    int n_images, next_image;
    uint32_t count, read;
} ddnn_feed;

/* Open a ddnn input file (`-` for stdin) and check its header against the model's input.
 * Returns 0, or -1 with a one-line reason in `err`. */
int ddnn_open_inputs(ddnn_feed *f, const char *path, char *err, size_t err_len);

/* Open the frames file: one `frame_id label` line per sample of the input file.
 * Returns 0, or -1 with a one-line reason in `err`. */
int ddnn_open_frames(ddnn_feed *f, const char *path, char *err, size_t err_len);

/* The next sample into x (DDNN_INPUT_SIZE floats, C order), with its frame id and label (-1 when
 * unknown). Returns 1, 0 when there are no more, or -1 with a one-line reason in `err`. */
int ddnn_next_sample(ddnn_feed *f, float *x, uint64_t *frame_id, long *label, char *err, size_t err_len);

#endif
