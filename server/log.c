/* log.c - leveled text / JSON log records (include/capmoe/log.h). */
#include "capmoe/log.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct capmoe_log {
    FILE *out;                 /* borrowed */
    capmoe_log_format format;
    atomic_int level;
    pthread_mutex_t mu;        /* one record at a time on out */
};

static const char *const k_levels[] = {"debug", "info", "warn", "error"};

const char *capmoe_log_level_name(capmoe_log_level l) {
    return (unsigned)l < 4 ? k_levels[l] : "?";
}

capmoe_log *capmoe_log_new(FILE *out, capmoe_log_format format, capmoe_log_level level) {
    capmoe_log *log = calloc(1, sizeof *log);
    if (!log) return NULL;
    log->out = out;
    log->format = format;
    atomic_init(&log->level, (int)level);
    if (pthread_mutex_init(&log->mu, NULL) != 0) {
        free(log);
        return NULL;
    }
    return log;
}

void capmoe_log_free(capmoe_log *log) {
    if (!log) return;
    pthread_mutex_destroy(&log->mu);
    free(log);
}

void capmoe_log_set_level(capmoe_log *log, capmoe_log_level level) {
    if (log) atomic_store(&log->level, (int)level);
}

capmoe_log_level capmoe_log_get_level(const capmoe_log *log) {
    return log ? (capmoe_log_level)atomic_load(&((capmoe_log *)log)->level) : CAPMOE_LOG_ERROR;
}

int capmoe_log_enabled(const capmoe_log *log, capmoe_log_level level) {
    return log && (int)level >= atomic_load(&((capmoe_log *)log)->level);
}

/* ---- a bounded line builder ------------------------------------------------ */

typedef struct line {
    char *p;
    size_t cap, len; /* len may exceed cap: the length the record needs */
} line;

static void put(line *l, const char *s, size_t n) {
    if (l->len < l->cap) {
        size_t room = l->cap - l->len;
        memcpy(l->p + l->len, s, n < room ? n : room);
    }
    l->len += n;
}

static void puts_(line *l, const char *s) { put(l, s, strlen(s)); }

/* JSON string body (without quotes): ", \, control characters escaped;
 * bytes >= 0x80 copied as they are (the caller's text is UTF-8). */
static void put_escaped(line *l, const char *s) {
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[8];
        switch (*p) {
        case '"': puts_(l, "\\\""); break;
        case '\\': puts_(l, "\\\\"); break;
        case '\n': puts_(l, "\\n"); break;
        case '\r': puts_(l, "\\r"); break;
        case '\t': puts_(l, "\\t"); break;
        default:
            if (*p < 0x20 || *p == 0x7f) {
                snprintf(tmp, sizeof tmp, "\\u%04x", *p);
                puts_(l, tmp);
            } else {
                put(l, (const char *)p, 1);
            }
        }
    }
}

static int needs_quotes(const char *s) {
    if (!*s) return 1;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || *p == 0x7f) return 1;
    return 0;
}

static void put_num(line *l, double d) {
    char tmp[40];
    if (!isfinite(d)) snprintf(tmp, sizeof tmp, "null");
    else if (d == floor(d) && fabs(d) < 1e15) snprintf(tmp, sizeof tmp, "%.0f", d);
    else snprintf(tmp, sizeof tmp, "%.6g", d);
    puts_(l, tmp);
}

static void put_time(line *l, double wall) {
    time_t sec = (time_t)floor(wall);
    int ms = (int)((wall - (double)sec) * 1000.0);
    if (ms > 999) ms = 999;
    if (ms < 0) ms = 0;
    struct tm tm;
    gmtime_r(&sec, &tm);
    char tmp[96];
    snprintf(tmp, sizeof tmp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
    puts_(l, tmp);
}

int capmoe_log_format_record(char *buf, size_t cap, capmoe_log_format format,
                             capmoe_log_level level, double wall_time, const char *msg,
                             const capmoe_log_field *f, int nf) {
    line l = {buf, cap, 0};
    /* a message's trailing newlines (libmicrohttpd ends its messages so) */
    size_t mlen = msg ? strlen(msg) : 0;
    while (mlen > 0 && (msg[mlen - 1] == '\n' || msg[mlen - 1] == '\r')) mlen--;
    char *m = malloc(mlen + 1);
    if (m) {
        memcpy(m, msg ? msg : "", mlen);
        m[mlen] = '\0';
    }
    const char *text = m ? m : "";
    if (format == CAPMOE_LOG_JSON) {
        puts_(&l, "{\"time\":\"");
        put_time(&l, wall_time);
        puts_(&l, "\",\"level\":\"");
        puts_(&l, capmoe_log_level_name(level));
        puts_(&l, "\",\"msg\":\"");
        put_escaped(&l, text);
        puts_(&l, "\"");
        for (int i = 0; i < nf; i++) {
            puts_(&l, ",\"");
            put_escaped(&l, f[i].key);
            puts_(&l, "\":");
            if (f[i].kind == CAPMOE_LF_INT) {
                char tmp[32];
                snprintf(tmp, sizeof tmp, "%lld", f[i].i);
                puts_(&l, tmp);
            } else if (f[i].kind == CAPMOE_LF_NUM) {
                put_num(&l, f[i].d);
            } else if (!f[i].s) {
                puts_(&l, "null");
            } else {
                puts_(&l, "\"");
                put_escaped(&l, f[i].s);
                puts_(&l, "\"");
            }
        }
        puts_(&l, "}");
    } else {
        put_time(&l, wall_time);
        puts_(&l, " ");
        char lv[8];
        snprintf(lv, sizeof lv, "%-5s", capmoe_log_level_name(level));
        puts_(&l, lv);
        puts_(&l, " ");
        /* the message as is, but never a second line */
        for (const char *p = text; *p; p++) {
            if (*p == '\n') puts_(&l, "\\n");
            else if (*p == '\r') puts_(&l, "\\r");
            else put(&l, p, 1);
        }
        for (int i = 0; i < nf; i++) {
            puts_(&l, " ");
            puts_(&l, f[i].key);
            puts_(&l, "=");
            if (f[i].kind == CAPMOE_LF_INT) {
                char tmp[32];
                snprintf(tmp, sizeof tmp, "%lld", f[i].i);
                puts_(&l, tmp);
            } else if (f[i].kind == CAPMOE_LF_NUM) {
                put_num(&l, f[i].d);
            } else if (!f[i].s) {
                puts_(&l, "-");
            } else if (needs_quotes(f[i].s)) {
                puts_(&l, "\"");
                put_escaped(&l, f[i].s);
                puts_(&l, "\"");
            } else {
                puts_(&l, f[i].s);
            }
        }
    }
    free(m);
    if (cap > 0) buf[l.len < cap ? l.len : cap - 1] = '\0';
    return (int)l.len;
}

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void capmoe_log_vfields(capmoe_log *log, capmoe_log_level level, const capmoe_log_field *fields,
                        int n_fields, const char *fmt, va_list ap) {
    if (!capmoe_log_enabled(log, level)) return;
    char small[512];
    char *msg = small;
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    if (n >= (int)sizeof small && (msg = malloc((size_t)n + 1))) vsnprintf(msg, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    if (!msg) msg = small; /* out of memory: the truncated message */
    double t = wall_now();
    char stack[2048];
    char *out = stack;
    int len = capmoe_log_format_record(stack, sizeof stack, log->format, level, t, msg, fields,
                                       n_fields);
    if (len >= (int)sizeof stack) {
        char *big = malloc((size_t)len + 1);
        if (big) {
            capmoe_log_format_record(big, (size_t)len + 1, log->format, level, t, msg, fields,
                                     n_fields);
            out = big;
        } else {
            len = (int)sizeof stack - 1;
        }
    }
    if (msg != small) free(msg);
    pthread_mutex_lock(&log->mu);
    fwrite(out, 1, (size_t)len, log->out);
    fputc('\n', log->out);
    fflush(log->out);
    pthread_mutex_unlock(&log->mu);
    if (out != stack) free(out);
}

void capmoe_log_fields(capmoe_log *log, capmoe_log_level level, const capmoe_log_field *fields,
                       int n_fields, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    capmoe_log_vfields(log, level, fields, n_fields, fmt, ap);
    va_end(ap);
}

void capmoe_log_msg(capmoe_log *log, capmoe_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    capmoe_log_vfields(log, level, NULL, 0, fmt, ap);
    va_end(ap);
}
