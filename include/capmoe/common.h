/* common.h - error reporting and small utilities shared by every capmoe module.
 *
 * Errors: functions that can fail return 0 on success and -1 on failure and
 * fill a caller-owned struct capmoe_error with a human-readable message that
 * names the file / tensor / option at fault. core/ never prints. */
#ifndef CAPMOE_COMMON_H
#define CAPMOE_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define CAPMOE_ERR_MSG 1024

typedef struct capmoe_error {
    char msg[CAPMOE_ERR_MSG];
} capmoe_error;

/* Formats msg into err (when err is non-NULL) and returns -1. */
int capmoe_set_error(capmoe_error *err, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* Reads a whole file. Returns a malloc'd, NUL-terminated buffer the caller
 * frees; *len (optional) receives the size without the NUL. NULL on error.
 * Only regular files are read (a FIFO, device, socket or directory is
 * refused by name, without blocking in open), and at most
 * CAPMOE_READ_FILE_MAX bytes (64 MiB: config.json, tokenizer.json,
 * tokenizer_config.json, the safetensors index, chat templates, the server
 * configuration); capmoe_read_file_max takes another limit. */
#define CAPMOE_READ_FILE_MAX ((size_t)64 << 20)
char *capmoe_read_file(const char *path, size_t *len, capmoe_error *err);
char *capmoe_read_file_max(const char *path, size_t *len, size_t max, capmoe_error *err);

/* Joins dir and name into a malloc'd path. */
char *capmoe_path_join(const char *dir, const char *name);

/* Monotonic clock in seconds. */
double capmoe_now(void);

/* Overflow-checked n * size allocation: NULL on overflow or failure. */
void *capmoe_malloc_array(size_t n, size_t size);

#endif
