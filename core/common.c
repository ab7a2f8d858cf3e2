/* common.c - error formatting, file reading, clocks. */
#include "capmoe/common.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int capmoe_set_error(capmoe_error *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

char *capmoe_read_file(const char *path, size_t *len, capmoe_error *err) {
    return capmoe_read_file_max(path, len, CAPMOE_READ_FILE_MAX, err);
}

static const char *file_kind(mode_t m) {
    if (S_ISDIR(m)) return "a directory";
    if (S_ISFIFO(m)) return "a FIFO";
    if (S_ISCHR(m)) return "a character device";
    if (S_ISBLK(m)) return "a block device";
    if (S_ISSOCK(m)) return "a socket";
    return "not a regular file";
}

char *capmoe_read_file_max(const char *path, size_t *len, size_t max, capmoe_error *err) {
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; the type is
     * checked before anything is read. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        capmoe_set_error(err, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        capmoe_set_error(err, "%s: cannot stat: %s", path, strerror(e));
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        capmoe_set_error(err, "%s: is %s, not a regular file", path, file_kind(sb.st_mode));
        return NULL;
    }
    if ((uint64_t)sb.st_size > (uint64_t)max) {
        close(fd);
        capmoe_set_error(err, "%s: %lld bytes, over the limit of %zu bytes for this file", path,
                         (long long)sb.st_size, max);
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    /* st_size is a hint (files in /proc say 0); the loop enforces max. */
    size_t cap = (size_t)sb.st_size + 1 > 4096 ? (size_t)sb.st_size + 1 : 4096, n = 0;
    char *buf = malloc(cap);
    if (!buf) {
        close(fd);
        capmoe_set_error(err, "%s: out of memory", path);
        return NULL;
    }
    for (;;) {
        if (n + 1 >= cap) {
            if (cap - 1 > max) {
                free(buf);
                close(fd);
                capmoe_set_error(err, "%s: over the limit of %zu bytes for this file", path, max);
                return NULL;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                close(fd);
                capmoe_set_error(err, "%s: out of memory", path);
                return NULL;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n - 1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            capmoe_set_error(err, "%s: read error: %s", path, strerror(e));
            return NULL;
        }
        if (r == 0) break;
        n += (size_t)r;
        if (n > max) {
            free(buf);
            close(fd);
            capmoe_set_error(err, "%s: over the limit of %zu bytes for this file", path, max);
            return NULL;
        }
    }
    close(fd);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

char *capmoe_path_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t o = a;
    if (a > 0 && dir[a - 1] != '/') p[o++] = '/';
    memcpy(p + o, name, b + 1);
    return p;
}

double capmoe_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void *capmoe_malloc_array(size_t n, size_t size) {
    if (size && n > (size_t)-1 / size) return NULL;
    size_t total = n * size;
    return malloc(total ? total : 1);
}
