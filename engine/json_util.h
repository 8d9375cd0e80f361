/* engine/json_util.h - typed reads from jansson objects with messages that
 * name the file and the key. */
#ifndef RALUD_ENGINE_JSON_UTIL_H
#define RALUD_ENGINE_JSON_UTIL_H

#include <jansson.h>
#include <stdbool.h>

#include "base/err.h"

/* Load a JSON object from path; error names the file (and line on syntax). */
int ju_load(json_t **out, const char *path, struct err_msg *em);
/* Integer key with a default; fails (naming file/key) on a non-integer or a
 * value outside [lo, hi]. */
int ju_int(const json_t *o, const char *key, int def, int lo, int hi, int *out, const char *file,
           struct err_msg *em);
int ju_num(const json_t *o, const char *key, double def, double *out, const char *file,
           struct err_msg *em);
int ju_bool(const json_t *o, const char *key, bool def, bool *out, const char *file,
            struct err_msg *em);
/* String key or NULL when absent/null; error if present with another type. */
int ju_str(const json_t *o, const char *key, const char **out, const char *file,
           struct err_msg *em);

#endif
