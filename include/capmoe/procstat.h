/* procstat.h - the standard process_* figures of the running process, read
 * from /proc and getrusage/getrlimit at scrape time (Linux). */
#ifndef CAPMOE_PROCSTAT_H
#define CAPMOE_PROCSTAT_H

typedef struct capmoe_procstat {
    double cpu_seconds;           /* user + system CPU time */
    double resident_bytes;        /* resident set size */
    double virtual_bytes;         /* virtual memory size */
    double open_fds;              /* entries of /proc/self/fd */
    double max_fds;               /* RLIMIT_NOFILE soft limit (-1: unlimited) */
    double start_time_seconds;    /* process start, Unix seconds */
} capmoe_procstat;

/* Fills out; a figure that cannot be read is -1 (and is then not exported).
 * Returns the number of figures read. */
int capmoe_procstat_read(capmoe_procstat *out);

#endif
