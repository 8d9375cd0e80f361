/* base/log.c - the logging sink and formatter. */
#define _POSIX_C_SOURCE 200809L
#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int log_level_current = LOG_LVL_INFO;
static log_sink_fn sink_fn; /* set once at start-up, before threads */
static void *sink_ctx;

static const char *const level_names[] = {"ERROR", "WARN ", "INFO ", "DEBUG"};

void log_set_level(enum log_level lvl) { log_level_current = (int)lvl; }

void log_set_sink(log_sink_fn fn, void *ctx)
{
    sink_fn = fn;
    sink_ctx = ctx;
}

void log_emit(enum log_level lvl, const char *module, const char *fmt, ...)
{
    char line[2048];
    struct timespec ts;
    struct tm tm;
    size_t n;
    va_list ap;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    n = strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += (size_t)snprintf(line + n, sizeof line - n, ".%03ldZ %s %s  ", ts.tv_nsec / 1000000,
                          level_names[lvl], module);
    if (n < sizeof line) {
        va_start(ap, fmt);
        int k = vsnprintf(line + n, sizeof line - n, fmt, ap);
        va_end(ap);
        if (k > 0)
            n += (size_t)k;
    }
    if (n > sizeof line - 2)
        n = sizeof line - 2;
    line[n++] = '\n';
    line[n] = '\0';
    if (sink_fn) {
        sink_fn(sink_ctx, lvl, line);
        return;
    }
    ssize_t w = write(STDERR_FILENO, line, n);
    (void)w;
}

_Noreturn void log_assert_fail(const char *expr, const char *file, int line)
{
    log_emit(LOG_LVL_ERROR, "assert", "assertion failed: %s at %s:%d", expr, file, line);
    abort();
}
