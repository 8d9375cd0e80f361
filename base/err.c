/* base/err.c - error code names and messages. */
#include "base/err.h"

#include <stdarg.h>
#include <stdio.h>

const char *err_str(int code)
{
    switch (code) {
#define ERR_STR_(name, val, msg) \
    case val:                    \
        return msg;
        ERR_MAP(ERR_STR_)
#undef ERR_STR_
    }
    return "unknown error";
}

const char *err_name(int code)
{
    switch (code) {
#define ERR_NAME_(name, val, msg) \
    case val:                     \
        return #name;
        ERR_MAP(ERR_NAME_)
#undef ERR_NAME_
    }
    return "UNKNOWN";
}

int err_set(struct err_msg *m, int code, const char *fmt, ...)
{
    if (m) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(m->text, sizeof m->text, fmt, ap);
        va_end(ap);
    }
    return code;
}
