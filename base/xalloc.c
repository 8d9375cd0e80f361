/* base/xalloc.c */
#include "base/xalloc.h"

#include <stdlib.h>
#include <string.h>

#include "base/log.h"

static void *check(void *p, size_t n)
{
    if (!p && n)
        log_assert_fail("allocation failed", __FILE__, __LINE__);
    return p;
}

void *xmalloc(size_t n) { return check(malloc(n ? n : 1), 1); }
void *xcalloc(size_t c, size_t s) { return check(calloc(c ? c : 1, s ? s : 1), 1); }
void *xrealloc(void *p, size_t n) { return check(realloc(p, n ? n : 1), 1); }
char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = xmalloc(n);
    memcpy(d, s, n);
    return d;
}
