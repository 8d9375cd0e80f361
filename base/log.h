/* base/log.h - leveled, line-atomic logging.
 *
 * Define LOG_MODULE before including. Each event is formatted into a stack
 * buffer and written with one write(2) so lines from threads never interleave.
 * Levels are gated in the macro: a disabled level evaluates no arguments. */
#ifndef RALUD_BASE_LOG_H
#define RALUD_BASE_LOG_H

enum log_level { LOG_LVL_ERROR = 0, LOG_LVL_WARN, LOG_LVL_INFO, LOG_LVL_DEBUG };

typedef void (*log_sink_fn)(void *ctx, enum log_level lvl, const char *line);

extern int log_level_current; /* read in the macros; set with log_set_level */

void log_set_level(enum log_level lvl);
/* Replace the sink (default: stderr). fn NULL restores the default. */
void log_set_sink(log_sink_fn fn, void *ctx);
void log_emit(enum log_level lvl, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#ifndef LOG_MODULE
#define LOG_MODULE "ralud"
#endif

#define LOG_AT_(lvl, ...)                             \
    do {                                              \
        if ((int)(lvl) <= log_level_current)          \
            log_emit((lvl), LOG_MODULE, __VA_ARGS__); \
    } while (0)
#define LOG_ERROR(...) LOG_AT_(LOG_LVL_ERROR, __VA_ARGS__)
#define LOG_WARN(...) LOG_AT_(LOG_LVL_WARN, __VA_ARGS__)
#define LOG_INFO(...) LOG_AT_(LOG_LVL_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) LOG_AT_(LOG_LVL_DEBUG, __VA_ARGS__)

/* Programmer errors only: logs expression/file/line and aborts. Never use it
 * on input, I/O or device errors. */
#define RALUD_ASSERT(cond)                              \
    do {                                                \
        if (!(cond))                                    \
            log_assert_fail(#cond, __FILE__, __LINE__); \
    } while (0)
_Noreturn void log_assert_fail(const char *expr, const char *file, int line);

#endif
