/* base/xalloc.h - small bookkeeping allocations that abort on OOM.
 *
 * Policy: allocations whose size comes from input (tensors, images, request
 * bodies) use plain malloc and return ERR_NOMEM. Small fixed-size bookkeeping
 * uses these, because recovering from a 64-byte failure is not testable. */
#ifndef RALUD_BASE_XALLOC_H
#define RALUD_BASE_XALLOC_H

#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

#endif
