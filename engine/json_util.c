/* engine/json_util.c */
#include "engine/json_util.h"

#include <math.h>

int ju_load(json_t **out, const char *path, struct err_msg *em)
{
    json_error_t je;
    json_t *o = json_load_file(path, 0, &je);
    if (!o)
        return err_set(em, ERR_FORMAT, "%s: %s (line %d)", path, je.text, je.line);
    if (!json_is_object(o)) {
        json_decref(o);
        return err_set(em, ERR_FORMAT, "%s: top level is not a JSON object", path);
    }
    *out = o;
    return ERR_OK;
}

int ju_int(const json_t *o, const char *key, int def, int lo, int hi, int *out, const char *file,
           struct err_msg *em)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return ERR_OK;
    }
    if (!json_is_integer(v))
        return err_set(em, ERR_FORMAT, "%s: \"%s\" must be an integer", file, key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return err_set(em, ERR_FORMAT, "%s: \"%s\" = %lld is outside [%d, %d]", file, key,
                       (long long)x, lo, hi);
    *out = (int)x;
    return ERR_OK;
}

int ju_num(const json_t *o, const char *key, double def, double *out, const char *file,
           struct err_msg *em)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return ERR_OK;
    }
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return err_set(em, ERR_FORMAT, "%s: \"%s\" must be a finite number", file, key);
    *out = json_number_value(v);
    return ERR_OK;
}

int ju_bool(const json_t *o, const char *key, bool def, bool *out, const char *file,
            struct err_msg *em)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return ERR_OK;
    }
    if (!json_is_boolean(v))
        return err_set(em, ERR_FORMAT, "%s: \"%s\" must be true or false", file, key);
    *out = json_is_true(v);
    return ERR_OK;
}

int ju_str(const json_t *o, const char *key, const char **out, const char *file, struct err_msg *em)
{
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v))
        return ERR_OK;
    if (!json_is_string(v))
        return err_set(em, ERR_FORMAT, "%s: \"%s\" must be a string", file, key);
    *out = json_string_value(v);
    return ERR_OK;
}
