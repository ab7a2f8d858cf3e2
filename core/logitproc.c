/* logitproc.c - logit_bias, penalties and the allowed-token mask
 * (logitproc.h). The state is a sparse list of the tokens that have a bias
 * or were seen (prompt or output), indexed by a dense id -> entry table, and
 * the list is kept in the form the engine applies directly, so accepting a
 * token updates one entry. */
#include "capmoe/logitproc.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct capmoe_logitproc {
    int vocab;
    capmoe_penalties pen;
    int32_t *slot;          /* vocab: entry index + 1, 0 = none */
    int32_t *ids;
    float *bias, *scale, *sub;
    int *count;             /* output occurrences */
    int n, cap;
    capmoe_logit_adj adj;
};

int capmoe_penalties_off(const capmoe_penalties *p) {
    return p->presence == 0 && p->frequency == 0 && (p->repetition == 0 || p->repetition == 1);
}

void capmoe_logit_adj_apply(const capmoe_logit_adj *a, float *logits, int n) {
    if (!a) return;
    for (int i = 0; i < a->n; i++) {
        int32_t t = a->ids[i];
        if (t < 0 || t >= n) continue;
        float l = logits[t] + a->bias[i];
        float r = a->scale[i];
        if (r != 1.0f) l = l > 0 ? l / r : l * r;
        logits[t] = l - a->sub[i];
    }
    if (a->allow) { /* a byte at a time: whole bytes allowed (inside strings) cost one test */
        for (int b = 0; b * 8 < n; b++) {
            unsigned m = b < a->allow_bytes ? a->allow[b] : 0;
            if (m == 0xFF) continue;
            int end = b * 8 + 8 < n ? b * 8 + 8 : n;
            for (int t = b * 8; t < end; t++)
                if (!(m >> (t - b * 8) & 1)) logits[t] = -INFINITY;
        }
    }
}

static int grow(capmoe_logitproc *lp) {
    if (lp->n < lp->cap) return 0;
    int nc = lp->cap ? lp->cap * 2 : 64;
    int32_t *ids = realloc(lp->ids, sizeof *ids * (size_t)nc);
    if (!ids) return -1;
    lp->ids = ids;
    float *b = realloc(lp->bias, sizeof *b * (size_t)nc);
    if (!b) return -1;
    lp->bias = b;
    float *s = realloc(lp->scale, sizeof *s * (size_t)nc);
    if (!s) return -1;
    lp->scale = s;
    float *u = realloc(lp->sub, sizeof *u * (size_t)nc);
    if (!u) return -1;
    lp->sub = u;
    int *c = realloc(lp->count, sizeof *c * (size_t)nc);
    if (!c) return -1;
    lp->count = c;
    lp->cap = nc;
    return 0;
}

/* The entry of t, created (neutral) when missing; -1 out of memory. */
static int entry(capmoe_logitproc *lp, int32_t t) {
    if (lp->slot[t]) return lp->slot[t] - 1;
    if (grow(lp) != 0) return -1;
    int i = lp->n++;
    lp->ids[i] = t;
    lp->bias[i] = 0;
    lp->scale[i] = 1;
    lp->sub[i] = 0;
    lp->count[i] = 0;
    lp->slot[t] = i + 1;
    return i;
}

static float rep_of(const capmoe_logitproc *lp) {
    return lp->pen.repetition > 0 ? lp->pen.repetition : 1.0f;
}

static void sync_adj(capmoe_logitproc *lp) {
    lp->adj.n = lp->n;
    lp->adj.ids = lp->ids;
    lp->adj.bias = lp->bias;
    lp->adj.scale = lp->scale;
    lp->adj.sub = lp->sub;
}

int capmoe_logitproc_new(capmoe_logitproc **out, int vocab, const capmoe_penalties *pen,
                         const capmoe_logit_bias *bias, int n_bias, const int32_t *prompt,
                         int n_prompt, capmoe_error *err) {
    *out = NULL;
    capmoe_logitproc *lp = calloc(1, sizeof *lp);
    if (!lp || vocab <= 0 || !(lp->slot = calloc((size_t)vocab, sizeof *lp->slot))) {
        free(lp);
        return capmoe_set_error(err, vocab <= 0 ? "logits processor: empty vocabulary"
                                                : "out of memory for a logits processor");
    }
    lp->vocab = vocab;
    if (pen) lp->pen = *pen;
    for (int i = 0; i < n_bias; i++) {
        if (bias[i].id < 0 || bias[i].id >= vocab) continue;
        int k = entry(lp, bias[i].id);
        if (k < 0) goto oom;
        lp->bias[k] = bias[i].bias;
    }
    float r = rep_of(lp);
    if (r != 1.0f)
        for (int i = 0; i < n_prompt; i++) {
            if (prompt[i] < 0 || prompt[i] >= vocab) continue;
            int k = entry(lp, prompt[i]);
            if (k < 0) goto oom;
            lp->scale[k] = r;
        }
    sync_adj(lp);
    *out = lp;
    return 0;
oom:
    capmoe_logitproc_free(lp);
    return capmoe_set_error(err, "out of memory for a logits processor");
}

int capmoe_logitproc_accept(capmoe_logitproc *lp, int32_t tok) {
    if (!lp || tok < 0 || tok >= lp->vocab || capmoe_penalties_off(&lp->pen)) return 0;
    int k = entry(lp, tok);
    if (k < 0) return -1;
    lp->count[k]++;
    lp->scale[k] = rep_of(lp);
    lp->sub[k] = lp->pen.frequency * (float)lp->count[k] + lp->pen.presence;
    sync_adj(lp);
    return 0;
}

const capmoe_logit_adj *capmoe_logitproc_adj(const capmoe_logitproc *lp) {
    return lp ? &lp->adj : NULL;
}

void capmoe_logitproc_set_allow(capmoe_logitproc *lp, const uint8_t *allow, int allow_bytes) {
    lp->adj.allow = allow;
    lp->adj.allow_bytes = allow ? allow_bytes : 0;
}

void capmoe_logitproc_free(capmoe_logitproc *lp) {
    if (!lp) return;
    free(lp->slot);
    free(lp->ids);
    free(lp->bias);
    free(lp->scale);
    free(lp->sub);
    free(lp->count);
    free(lp);
}
