/* procstat.c - process_* figures from /proc/self (include/capmoe/procstat.h),
 * computed the way Prometheus' own client libraries do. */
#include "capmoe/procstat.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* btime of /proc/stat: boot time, Unix seconds; -1 when unreadable. */
static double boot_time(void) {
    FILE *f = fopen("/proc/stat", "r");
    if (!f) return -1;
    char line[256];
    double bt = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "btime ", 6) == 0) {
            bt = strtod(line + 6, NULL);
            break;
        }
    fclose(f);
    return bt;
}

/* Field 22 of /proc/self/stat (starttime, clock ticks after boot). */
static double start_ticks(void) {
    FILE *f = fopen("/proc/self/stat", "r");
    if (!f) return -1;
    char buf[1024];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and ')' */
    if (!p) return -1;
    p++;
    /* after ')': field 3 (state) ... field 22 */
    for (int field = 3; field < 22; field++) {
        p = strchr(p + 1, ' ');
        if (!p) return -1;
    }
    return strtod(p + 1, NULL);
}

int capmoe_procstat_read(capmoe_procstat *o) {
    int n = 0;
    o->cpu_seconds = o->resident_bytes = o->virtual_bytes = -1;
    o->open_fds = o->max_fds = o->start_time_seconds = -1;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        o->cpu_seconds = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
                         (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
        n++;
    }
    long page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long long size, resident;
        if (fscanf(f, "%llu %llu", &size, &resident) == 2 && page > 0) {
            o->virtual_bytes = (double)size * (double)page;
            o->resident_bytes = (double)resident * (double)page;
            n += 2;
        }
        fclose(f);
    }
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        long k = 0;
        struct dirent *e;
        while ((e = readdir(d)))
            if (e->d_name[0] != '.') k++;
        closedir(d);
        o->open_fds = (double)(k - 1); /* not the descriptor opendir itself holds */
        n++;
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        o->max_fds = rl.rlim_cur == RLIM_INFINITY ? -1 : (double)rl.rlim_cur;
        if (rl.rlim_cur != RLIM_INFINITY) n++;
    }
    double bt = boot_time(), st = start_ticks();
    long hz = sysconf(_SC_CLK_TCK);
    if (bt >= 0 && st >= 0 && hz > 0) {
        o->start_time_seconds = bt + st / (double)hz;
        n++;
    }
    return n;
}
