/* tools/cli/cv_tokenizer.c - the tokenizer case: every prompt through the
 * SD3 CLIP-L, CLIP-G and T5 (256) tokenizers and FLUX's T5 (512); ids must
 * equal the reference exactly, padded and untruncated. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/tokenizer.h"
#include "tools/cli/cv_internal.h"

struct tok_check {
    const char *tensor; /* reference ids [P, L] I64 */
    const char *model;  /* folder under DIR/models */
    const char *sub;    /* tokenizer folder */
    int len;
    const char *untrunc; /* key in untruncated_ids, or NULL */
};

static const struct tok_check checks[] = {
    {"clip_l_ids", "tiny-sd3", "tokenizer", 77, "clip"},
    {"clip_g_ids", "tiny-sd3", "tokenizer_2", 77, NULL},
    {"t5_ids_256", "tiny-sd3", "tokenizer_3", 256, "t5"},
    {"t5_ids_512", "tiny-flux", "tokenizer_2", 512, NULL},
};

int cv_run_tokenizer(struct cv_ctx *x, struct cv_case *c, struct cv_result *r, struct err_msg *em)
{
    json_t *prompts = json_object_get(c->cj, "prompts");
    json_t *untr = json_object_get(c->cj, "untruncated_ids");
    size_t np = json_array_size(prompts);
    int rc = ERR_OK, bad = 0, total = 0;
    if (!np)
        return err_set(em, ERR_FORMAT, "%s: no prompts", c->name);
    for (size_t k = 0; k < sizeof checks / sizeof *checks && !rc; k++) {
        const struct tok_check *tc = &checks[k];
        char dir[1400];
        struct tok *t = NULL;
        struct tensor ref;
        int32_t *ids = NULL;
        if (st_find(c->st, tc->tensor, &ref) || ref.dtype != DTYPE_I64 || ref.ndim != 2 ||
            ref.ne[0] != (int64_t)np || ref.ne[1] != tc->len)
            return err_set(em, ERR_FORMAT, "%s: tensor %s missing or misshapen", c->name,
                           tc->tensor);
        snprintf(dir, sizeof dir, "%s/models/%s/%s", x->o->dir, tc->model, tc->sub);
        if ((rc = tok_load(&t, dir, em)))
            return rc;
        ids = malloc(sizeof(int32_t) * 4096);
        if (!ids) {
            tok_free(t);
            return ERR_NOMEM;
        }
        for (size_t i = 0; i < np && !rc; i++) {
            const char *text = json_string_value(json_array_get(prompts, i));
            size_t len = json_string_length(json_array_get(prompts, i));
            const int64_t *want = (const int64_t *)ref.data + i * (size_t)tc->len;
            if ((rc = tok_encode(t, text, len, tc->len, ids, NULL)))
                break;
            total++;
            for (int j = 0; j < tc->len; j++)
                if (ids[j] != want[j]) {
                    bad++;
                    break;
                }
            json_t *u = tc->untrunc ? json_array_get(json_object_get(untr, tc->untrunc), i) : NULL;
            if (u) {
                size_t n = 0;
                if ((rc = tok_encode_raw(t, text, len, ids, 4096, &n)))
                    break;
                total++;
                bool same = n == json_array_size(u);
                for (size_t j = 0; same && j < n && j < 4096; j++)
                    same = ids[j] == json_integer_value(json_array_get(u, j));
                bad += !same;
            }
        }
        free(ids);
        tok_free(t);
    }
    if (rc)
        return rc;
    r->worst_rel = bad ? 1.0 : 0.0;
    if (bad) {
        r->fail = true;
        snprintf(r->note, sizeof r->note, "%d of %d id sequences differ", bad, total);
    } else {
        snprintf(r->note, sizeof r->note, "%d id sequences equal", total);
    }
    return ERR_OK;
}
