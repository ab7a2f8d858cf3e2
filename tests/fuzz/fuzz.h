/* fuzz.h - helpers shared by the fuzz harnesses of tests/fuzz/.
 *
 * Every harness defines LLVMFuzzerTestOneInput (and, when it loads fixtures
 * once, LLVMFuzzerInitialize). It is built twice:
 *   make fuzz     clang -fsanitize=fuzzer,address,undefined (libFuzzer drives it)
 *   make tests    gcc + ASan/UBSan with tests/fuzz/replay_main.c, which feeds
 *                 it every file of its corpus and regression directories
 *                 (tests/t_fuzz_replay.sh, part of make test).
 * Fixture paths are relative to the repository root (the harnesses are run
 * from there; CAPMOE_FUZZ_ROOT overrides it).
 *
 * A harness aborts (FUZZ_CHECK) when an invariant of the parser is broken;
 * errors the parser reports are the expected outcome for most inputs. */
#ifndef CAPMOE_FUZZ_H
#define CAPMOE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_CHECK(cond, ...)                                                        \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: invariant broken: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                            \
            fputc('\n', stderr);                                                     \
            abort();                                                                 \
        }                                                                            \
    } while (0)

/* A malloc'd NUL-terminated copy of data[0..n) (the NUL is not counted). */
static inline char *fuzz_strndup(const uint8_t *data, size_t n) {
    char *s = malloc(n + 1);
    if (!s) abort();
    if (n) memcpy(s, data, n);
    s[n] = '\0';
    return s;
}

/* Path of a fixture: $CAPMOE_FUZZ_ROOT/rel, or rel. Static buffer. */
static inline const char *fuzz_path(const char *rel) {
    static char buf[4096];
    const char *root = getenv("CAPMOE_FUZZ_ROOT");
    if (!root || !*root) return rel;
    snprintf(buf, sizeof buf, "%s/%s", root, rel);
    return buf;
}

/* An anonymous in-memory file holding data[0..n); *path receives a path
 * that opens it (/proc/self/fd/N). Returns the fd (close it), or -1. */
static inline int fuzz_memfile(const uint8_t *data, size_t n, char *path, size_t cap) {
    int fd = memfd_create("capmoe-fuzz", MFD_CLOEXEC);
    if (fd < 0) return -1;
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, data + off, n - off);
        if (w <= 0) {
            close(fd);
            return -1;
        }
        off += (size_t)w;
    }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

#endif
