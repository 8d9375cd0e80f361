/* base/err.h - error codes as values.
 *
 * Every fallible function returns an int: 0 (ERR_OK) on success or a negative
 * ERR_* code. The table is an X-macro so names and messages stay in one place.
 * Detail (which file, which tensor) goes to the log or to an err_msg buffer
 * supplied by the caller; the code says only what kind of failure it was. */
#ifndef RALUD_BASE_ERR_H
#define RALUD_BASE_ERR_H

#include <stddef.h>

#define ERR_MAP(X)                             \
    X(OK, 0, "ok")                             \
    X(INVAL, -1, "invalid argument")           \
    X(NOMEM, -2, "out of memory")              \
    X(IO, -3, "i/o error")                     \
    X(FORMAT, -4, "malformed file")            \
    X(NOTFOUND, -5, "not found")               \
    X(UNSUPPORTED, -6, "unsupported")          \
    X(MISMATCH, -7, "shape or dtype mismatch") \
    X(CANCELLED, -8, "cancelled")              \
    X(BUSY, -9, "busy")                        \
    X(DEVICE, -10, "device error")             \
    X(INTERNAL, -11, "internal error")

enum err_code {
#define ERR_ENUM_(name, val, msg) ERR_##name = (val),
    ERR_MAP(ERR_ENUM_)
#undef ERR_ENUM_
};

/* Static string for a code; never NULL. */
const char *err_str(int code);
/* Short upper-case name ("FORMAT") for a code; never NULL. */
const char *err_name(int code);

/* A caller-owned message buffer: functions that can fail on user input write
 * one human-readable sentence here (file, tensor, field) in addition to the
 * log. */
struct err_msg {
    char text[512];
};

/* printf into m (if m is not NULL); returns code so callers can
 * `return err_set(m, ERR_FORMAT, "...")`. */
int err_set(struct err_msg *m, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
