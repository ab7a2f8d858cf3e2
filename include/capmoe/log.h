/* log.h - the server's leveled logger: one line per record, with a UTC
 * timestamp, in text or JSON.
 *
 *   text  2026-11-01T09:30:12.345Z info  listening on http://127.0.0.1:8080 port=8080
 *         (message, then key=value fields; a value with spaces, quotes, '='
 *         or control characters is written as a JSON string)
 *   json  {"time":"2026-11-01T09:30:12.345Z","level":"info","msg":"...","port":8080}
 *
 * A record is formatted whole and written with one fwrite + fflush under the
 * logger's mutex, so lines of different threads never interleave. The level
 * can change at any time from any thread (SIGHUP reload). core/ never logs:
 * only server/ holds a logger (in the server object; no global logger).
 * Every function accepts log == NULL as "log nothing". */
#ifndef CAPMOE_LOG_H
#define CAPMOE_LOG_H

#include <stdarg.h>
#include <stdio.h>

typedef enum capmoe_log_level {
    CAPMOE_LOG_DEBUG = 0,
    CAPMOE_LOG_INFO,
    CAPMOE_LOG_WARN,
    CAPMOE_LOG_ERROR
} capmoe_log_level;

typedef enum capmoe_log_format { CAPMOE_LOG_TEXT = 0, CAPMOE_LOG_JSON } capmoe_log_format;

/* Names as the options spell them: debug, info, warn, error / text, json. */
#define CAPMOE_LOG_LEVELS "debug|info|warn|error"
#define CAPMOE_LOG_FORMATS "text|json"
const char *capmoe_log_level_name(capmoe_log_level l);

typedef enum capmoe_log_kind { CAPMOE_LF_STR = 0, CAPMOE_LF_INT, CAPMOE_LF_NUM } capmoe_log_kind;

/* One key=value field of a record. Strings are borrowed for the call; a NULL
 * string is written as null (json) or - (text). */
typedef struct capmoe_log_field {
    const char *key;
    capmoe_log_kind kind;
    const char *s;
    long long i;
    double d;
} capmoe_log_field;

#define CAPMOE_LOG_STR(k, v) ((capmoe_log_field){(k), CAPMOE_LF_STR, (v), 0, 0})
#define CAPMOE_LOG_INT(k, v) ((capmoe_log_field){(k), CAPMOE_LF_INT, NULL, (long long)(v), 0})
#define CAPMOE_LOG_NUM(k, v) ((capmoe_log_field){(k), CAPMOE_LF_NUM, NULL, 0, (double)(v)})

typedef struct capmoe_log capmoe_log;

/* A logger writing to out (not closed by the logger). NULL on out-of-memory. */
capmoe_log *capmoe_log_new(FILE *out, capmoe_log_format format, capmoe_log_level level);
void capmoe_log_free(capmoe_log *log);
void capmoe_log_set_level(capmoe_log *log, capmoe_log_level level);
capmoe_log_level capmoe_log_get_level(const capmoe_log *log);
/* 1 when records of this level are written. */
int capmoe_log_enabled(const capmoe_log *log, capmoe_log_level level);

/* Writes one record: the printf-formatted message, then the fields. A
 * message ending in newlines (libmicrohttpd's) loses them; newlines inside
 * are escaped, so a record is always one line. */
void capmoe_log_fields(capmoe_log *log, capmoe_log_level level, const capmoe_log_field *fields,
                       int n_fields, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 5, 6)))
#endif
    ;
void capmoe_log_vfields(capmoe_log *log, capmoe_log_level level, const capmoe_log_field *fields,
                        int n_fields, const char *fmt, va_list ap);
/* A record without fields. */
void capmoe_log_msg(capmoe_log *log, capmoe_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#define capmoe_log_debug(log, ...) capmoe_log_msg((log), CAPMOE_LOG_DEBUG, __VA_ARGS__)
#define capmoe_log_info(log, ...) capmoe_log_msg((log), CAPMOE_LOG_INFO, __VA_ARGS__)
#define capmoe_log_warn(log, ...) capmoe_log_msg((log), CAPMOE_LOG_WARN, __VA_ARGS__)
#define capmoe_log_error(log, ...) capmoe_log_msg((log), CAPMOE_LOG_ERROR, __VA_ARGS__)

/* Formats a record into buf (for tests): the line without its newline.
 * Returns the length it needed (as snprintf). wall_time: Unix seconds. */
int capmoe_log_format_record(char *buf, size_t cap, capmoe_log_format format,
                             capmoe_log_level level, double wall_time, const char *msg,
                             const capmoe_log_field *fields, int n_fields);

#endif
