/* load_gate.c - a test-only LD_PRELOAD library: opening a file whose name ends
 * in "model.safetensors" waits until the file named by $CAPMOE_TEST_LOAD_GATE
 * exists. t_server_shutdown uses it to hold capmoe-server in its "loading"
 * state for as long as the test needs (the server itself refuses FIFOs and
 * other files that block, so the test cannot slow the load down otherwise).
 * Built by the test with: cc -shared -fPIC -o load_gate.so load_gate.c -ldl */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void gate(const char *path) {
    const char *g = getenv("CAPMOE_TEST_LOAD_GATE");
    size_t n = path ? strlen(path) : 0, s = strlen("model.safetensors");
    if (!g || n < s || strcmp(path + n - s, "model.safetensors") != 0) return;
    struct timespec ts = {0, 20 * 1000 * 1000};
    while (access(g, F_OK) != 0) nanosleep(&ts, NULL);
}

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);

static mode_t mode_arg(int flags, va_list ap) {
    return (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
}

#define GATED_OPEN(name)                                                   \
    int name(const char *path, int flags, ...) {                           \
        va_list ap;                                                        \
        va_start(ap, flags);                                               \
        mode_t m = mode_arg(flags, ap);                                    \
        va_end(ap);                                                        \
        gate(path);                                                        \
        open_fn real = (open_fn)dlsym(RTLD_NEXT, #name);                   \
        return real(path, flags, m);                                       \
    }
#define GATED_OPENAT(name)                                                 \
    int name(int dir, const char *path, int flags, ...) {                  \
        va_list ap;                                                        \
        va_start(ap, flags);                                               \
        mode_t m = mode_arg(flags, ap);                                    \
        va_end(ap);                                                        \
        gate(path);                                                        \
        openat_fn real = (openat_fn)dlsym(RTLD_NEXT, #name);               \
        return real(dir, path, flags, m);                                  \
    }

GATED_OPEN(open)
GATED_OPEN(open64)
GATED_OPENAT(openat)
GATED_OPENAT(openat64)
