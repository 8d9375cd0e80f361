/* kernels/cpu/ralu_ops.c - RALU token-list expansion: small index and id
 * bookkeeping, one task per sample. */
#include <math.h>

#include "base/log.h"
#include "kernels/cpu/cpu_internal.h"

static void expand_task(void *arg, int64_t b, int thread)
{
    const struct ralu_expand_args *a = arg;
    (void)thread;
    const struct tensor *gi = a->gid_in;
    int64_t S = gi->ne[1], P = gi->ne[2], T = a->n_single + 4 * (int64_t)a->n_rep;
    const int32_t *order = a->order ? (const int32_t *)a->order->data + b * S : NULL;
    const float *gin = (const float *)gi->data + b * S * P;
    int32_t *idx = (int32_t *)a->idx_out->data + b * T;
    float *gout = (float *)a->gid_out->data + b * T * P;
    float *pout = a->pos_out ? (float *)a->pos_out->data + b * T * P : NULL;
    int32_t *dest = a->dest_out ? (int32_t *)a->dest_out->data + b * T : NULL;
    int64_t rep0 = a->rep_first ? 0 : a->n_single; /* first repeated source slot */
    int64_t t = 0;
    for (int part = 0; part < 2; part++) {
        bool rep = (part == 0) == a->rep_first;
        int64_t s0 = rep ? rep0 : (a->rep_first ? a->n_rep : 0);
        int64_t ns = rep ? a->n_rep : a->n_single;
        for (int64_t s = s0; s < s0 + ns; s++) {
            int32_t src = order ? order[s] : (int32_t)s;
            for (int k = 0; k < (rep ? 4 : 1); k++, t++) {
                idx[t] = src;
                for (int64_t d = 0; d < P; d++) {
                    float v = gin[(int64_t)src * P + d];
                    if (rep && d == a->row_dim)
                        v += (float)(k / 2) * 0.5f;
                    if (rep && d == a->row_dim + 1)
                        v += (float)(k % 2) * 0.5f;
                    v *= a->scale;
                    gout[t * P + d] = v;
                    if (pout)
                        pout[t * P + d] = v + a->pos_off[d];
                }
                if (dest)
                    dest[t] = (int32_t)(gout[t * P + a->row_dim] * (float)a->grid_w +
                                        gout[t * P + a->row_dim + 1]);
            }
        }
    }
    RALUD_ASSERT(t == T);
}

void cpu_ralu_expand(struct backend *be, const struct ralu_expand_args *a)
{
    pool_run(cpu_pool(be), a->gid_in->ne[0], expand_task, (void *)a);
}

struct sub_arg {
    struct tensor *y;
    const struct tensor *x;
};

/* One task per output row (b, c, i). */
static void sub_task(void *arg, int64_t r, int thread)
{
    const struct sub_arg *a = arg;
    (void)thread;
    int64_t ho = a->y->ne[2], wo = a->y->ne[3], w = a->x->ne[3];
    int64_t bc = r / ho, i = r % ho;
    const float *src = (const float *)a->x->data + (bc * a->x->ne[2] + 2 * i) * w;
    float *dst = (float *)a->y->data + r * wo;
    for (int64_t j = 0; j < wo; j++)
        dst[j] = src[2 * j];
}

void cpu_subsample2x(struct backend *be, struct tensor *y, const struct tensor *x)
{
    struct sub_arg a = {y, x};
    pool_run(cpu_pool(be), y->ne[0] * y->ne[1] * y->ne[2], sub_task, &a);
}
