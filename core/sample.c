/* sample.c - token sampling from logits: seeded RNG, temperature, top-k,
 * top-p, min-p, and log-probabilities.
 *
 * RNG: xoshiro256** (Blackman & Vigna), its 256-bit state filled from the
 * 64-bit seed by splitmix64, so any seed (0 included) gives a usable state.
 *
 * capmoe_sample applies, in this order:
 *   1. temperature   logits / T  (T <= 0 or NaN: greedy argmax, no RNG draw)
 *   2. top-k         keep the k highest logits (ties: lower token id first)
 *   3. softmax       over the survivors, in double
 *   4. top-p         keep the smallest set of most probable tokens whose
 *                    cumulative probability >= top_p (always >= 1 token)
 *   5. min-p         drop tokens with p < min_p * p_max (p_max survives)
 *   6. renormalise and draw one uniform number from the RNG.
 * This is the order of Hugging Face transformers' warpers (temperature,
 * top_k, top_p, min_p) and of vLLM's top-k-then-top-p sampler; vLLM applies
 * min-p as a logits processor before top-k/top-p and llama.cpp's default
 * chain runs top-k, top-p, min-p before temperature. Top-k and min-p are
 * thresholds, so only top-p's position changes the result (top-p is computed
 * on the distribution renormalised after top-k; min-p's threshold relative to
 * p_max is unaffected by renormalisation).
 *
 * Non-finite logits: NaN counts as -inf (probability 0). When some logit is
 * +inf, the distribution is uniform over the +inf tokens. When every logit is
 * -inf or NaN they are all equal, so the distribution is uniform over all n
 * tokens (and greedy picks token 0), which keeps log-probabilities finite.
 *
 * With temperature > 0, capmoe_sample draws exactly one number from the RNG
 * per call whatever the filters keep, so a seeded request's stream of random
 * numbers does not depend on the filters.
 */
#include "capmoe/sample.h"

#include <math.h>
#include <stddef.h>

/* ---- RNG ------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

void capmoe_rng_seed(capmoe_rng *rng, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) rng->s[i] = splitmix64(&x);
}

uint64_t capmoe_rng_next(capmoe_rng *rng) {
    uint64_t *s = rng->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

double capmoe_rng_uniform(capmoe_rng *rng) {
    /* The top 53 bits scaled by 2^-53: uniform on [0, 1) with every value a
     * multiple of 2^-53. */
    return (double)(capmoe_rng_next(rng) >> 11) * 0x1.0p-53;
}

void capmoe_sampling_default(capmoe_sampling *s) {
    s->temperature = 1.0f;
    s->top_p = 1.0f;
    s->top_k = 0;
    s->min_p = 0.0f;
}

/* ---- helpers -------------------------------------------------------------- */

/* A logit with NaN mapped to -inf. */
static inline double lg(const float *logits, int i) {
    float v = logits[i];
    return isnan(v) ? -INFINITY : (double)v;
}

/* Total order "a ranks before b": larger logit first, then lower id. */
static inline int before(const float *logits, int a, int b) {
    double la = lg(logits, a), lb = lg(logits, b);
    if (la != lb) return la > lb;
    return a < b;
}

int capmoe_argmax(const float *logits, int n) {
    if (!logits || n <= 0) return 0;
    /* NaN compares false, so it never wins: the same as ranking it -inf. */
    int best = 0;
    float bv = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[i] > bv) {
            bv = logits[i];
            best = i;
        }
    return best;
}

/* The shape of a row: its max (NaN as -inf) and how many tokens reach it when
 * it is +inf or -inf. */
typedef struct row_info {
    double lmax;
    int n_at_max;
} row_info;

static row_info row_scan(const float *logits, int n) {
    row_info r = {-INFINITY, 0};
    for (int i = 0; i < n; i++) {
        double v = lg(logits, i);
        if (v > r.lmax) {
            r.lmax = v;
            r.n_at_max = 1;
        } else if (v == r.lmax) {
            r.n_at_max++;
        }
    }
    return r;
}

/* Unnormalised probability exp((l - lmax) / T) of token i, in double; exactly
 * 1 for tokens at the max, 0 for -inf / NaN. Valid for a finite lmax. */
static inline double weight(const float *logits, int i, double lmax, double temp) {
    double d = lg(logits, i) - lmax;
    if (d == -INFINITY) return 0.0;
    return exp(d / temp);
}

static inline void swap_int(int *a, int *b) {
    int t = *a;
    *a = *b;
    *b = t;
}

/* Partitions ids[lo..hi) (hi - lo >= 1) around a median-of-three pivot in
 * `before` order: returns p with ids[lo..p) ranking before ids[p] and
 * ids(p..hi) after it. The order is strict (ids are distinct), so Lomuto's
 * scheme needs no care for equal keys. */
static int partition(int *ids, int lo, int hi, const float *logits) {
    int last = hi - 1, mid = lo + (hi - lo) / 2;
    if (hi - lo >= 3) {
        /* median of ids[lo], ids[mid], ids[last] goes to ids[last] */
        int a = ids[lo], b = ids[mid], c = ids[last];
        int med = before(logits, a, b) ? (before(logits, b, c) ? b : before(logits, a, c) ? c : a)
                                       : (before(logits, a, c) ? a : before(logits, b, c) ? c : b);
        if (med == a) swap_int(&ids[lo], &ids[last]);
        else if (med == b) swap_int(&ids[mid], &ids[last]);
    }
    int pivot = ids[last], p = lo;
    for (int i = lo; i < last; i++)
        if (before(logits, ids[i], pivot)) swap_int(&ids[i], &ids[p++]);
    swap_int(&ids[p], &ids[last]);
    return p;
}

/* Quickselect: afterwards ids[0..k) are the first k of ids[0..m) in `before`
 * order (in no particular order among themselves). */
static void select_top(int *ids, int m, int k, const float *logits) {
    int lo = 0, hi = m;
    if (k <= 0 || k >= m) return;
    while (hi - lo > 1) {
        int p = partition(ids, lo, hi, logits);
        if (p == k || p == k - 1) return;
        if (p > k) hi = p;
        else lo = p + 1;
    }
}

/* ---- sampling ------------------------------------------------------------- */

/* Rows with +inf logits: every +inf token has weight 1, the rest 0. Top-k
 * keeps the first k of them (lower ids), top-p the first ceil(top_p * c);
 * min-p keeps all (they all equal p_max). */
static int plus_inf_count(row_info r, const capmoe_sampling *s) {
    int c = r.n_at_max;
    if (s->top_k > 0 && s->top_k < c) c = s->top_k;
    if (s->top_p < 1.0f) {
        double target = (double)s->top_p * c;
        int keep = 1;
        while (keep < c && (double)keep < target) keep++;
        c = keep;
    }
    return c;
}

/* Id of the k-th (0-based) +inf logit. */
static int nth_plus_inf(const float *logits, int n, int k) {
    for (int i = 0; i < n; i++)
        if (logits[i] == INFINITY && k-- == 0) return i;
    return capmoe_argmax(logits, n);
}

/* Steps 2-5 for a row with a finite max: leaves the surviving candidates in
 * ids[0..m) and their total unnormalised weight in *z; returns m >= 1. */
static int filter(const float *logits, int n, const capmoe_sampling *s, double temp,
                  row_info r, int *ids, double *z_out) {
    int m = 0;
    /* Candidates: every token with non-zero probability. */
    for (int i = 0; i < n; i++)
        if (lg(logits, i) > -INFINITY) ids[m++] = i;

    /* 2. top-k */
    if (s->top_k > 0 && s->top_k < m) {
        select_top(ids, m, s->top_k, logits);
        m = s->top_k;
    }

    /* 3. softmax normaliser of the survivors (the max's weight is exactly 1). */
    double z = 0.0;
    for (int j = 0; j < m; j++) z += weight(logits, ids[j], r.lmax, temp);

    /* 4. top-p: the smallest prefix of the ranked candidates whose mass
     * reaches top_p * z, found by a weighted quickselect (expected O(m),
     * no full sort). Invariant: ids[0..lo) are kept, with mass acc; the
     * boundary token lies in ids[lo..hi). */
    double top_p = s->top_p;
    if (top_p < 1.0) { /* NaN compares false: off */
        double target = top_p * z, acc = 0.0;
        int lo = 0, hi = m, keep = m;
        /* Most of the mass usually sits in a few tokens: select the top 256
         * by comparisons alone and weigh only those first, so the common
         * case computes a few hundred exps instead of m. */
        enum { HEAD = 256 };
        if (m > 4 * HEAD) {
            select_top(ids, m, HEAD, logits);
            double head = 0.0;
            for (int j = 0; j < HEAD; j++) head += weight(logits, ids[j], r.lmax, temp);
            if (head >= target) {
                hi = HEAD;
            } else {
                acc = head;
                lo = HEAD;
            }
        }
        while (lo < hi) {
            int p = partition(ids, lo, hi, logits);
            double up = 0.0;
            for (int j = lo; j < p; j++) up += weight(logits, ids[j], r.lmax, temp);
            if (p > lo && acc + up >= target) {
                hi = p; /* the boundary is above the pivot */
                continue;
            }
            double wp = weight(logits, ids[p], r.lmax, temp);
            if (acc + up + wp >= target) {
                keep = p + 1;
                acc += up + wp;
                break;
            }
            acc += up + wp;
            lo = p + 1;
        }
        if (keep < m) {
            m = keep;
            z = acc; /* renormalise over the kept tokens */
        }
    }

    /* 5. min-p relative to p_max, whose weight is exactly 1. */
    if (s->min_p > 0.0f) {
        double min_p = s->min_p;
        int w = 0;
        z = 0.0;
        for (int j = 0; j < m; j++) {
            double wj = weight(logits, ids[j], r.lmax, temp);
            if (wj >= min_p || wj >= 1.0) { /* the top token always stays */
                ids[w++] = ids[j];
                z += wj;
            }
        }
        m = w;
    }

    *z_out = z;
    return m;
}

int capmoe_sample(const float *logits, int n, const capmoe_sampling *s, capmoe_rng *rng,
                  void *scratch) {
    if (!logits || n <= 0) return 0;
    capmoe_sampling def;
    if (!s) {
        capmoe_sampling_default(&def);
        s = &def;
    }
    double temp = s->temperature;
    if (!(temp > 0.0) || !rng || !scratch) return capmoe_argmax(logits, n);

    double u = capmoe_rng_uniform(rng); /* one draw per call, always */
    row_info r = row_scan(logits, n);
    if (r.lmax == -INFINITY) {
        /* All -inf / NaN: uniform over every token. */
        int pick = (int)(u * n);
        return pick < n ? pick : n - 1;
    }
    if (r.lmax == INFINITY) {
        /* Uniform over the +inf tokens the filters keep. */
        int c = plus_inf_count(r, s);
        int pick = (int)(u * c);
        if (pick >= c) pick = c - 1;
        return nth_plus_inf(logits, n, pick);
    }

    int *ids = (int *)scratch;
    double z;
    int m = filter(logits, n, s, temp, r, ids, &z);

    /* 6. draw */
    double target = u * z, cum = 0.0;
    int last = ids[0];
    for (int j = 0; j < m; j++) {
        double wj = weight(logits, ids[j], r.lmax, temp);
        if (wj > 0.0) last = ids[j];
        cum += wj;
        if (target < cum) return ids[j];
    }
    return last; /* rounding: u * z landed at the very end */
}

int capmoe_sample_probs(const float *logits, int n, const capmoe_sampling *s, void *scratch,
                        double *probs) {
    if (!logits || n <= 0 || !probs) return 0;
    for (int i = 0; i < n; i++) probs[i] = 0.0;
    capmoe_sampling def;
    if (!s) {
        capmoe_sampling_default(&def);
        s = &def;
    }
    double temp = s->temperature;
    if (!(temp > 0.0) || !scratch) {
        probs[capmoe_argmax(logits, n)] = 1.0;
        return 1;
    }
    row_info r = row_scan(logits, n);
    if (r.lmax == -INFINITY) {
        for (int i = 0; i < n; i++) probs[i] = 1.0 / n;
        return n;
    }
    if (r.lmax == INFINITY) {
        int c = plus_inf_count(r, s);
        for (int k = 0; k < c; k++) probs[nth_plus_inf(logits, n, k)] = 1.0 / c;
        return c;
    }
    int *ids = (int *)scratch;
    double z;
    int m = filter(logits, n, s, temp, r, ids, &z);
    for (int j = 0; j < m; j++) probs[ids[j]] = weight(logits, ids[j], r.lmax, temp) / z;
    return m;
}

/* ---- log-probabilities ---------------------------------------------------- */

/* log of sum(exp(l - lmax)) in double, for a finite lmax. log p of a token is
 * then (l - lmax) - this, which keeps full precision at large logits (no
 * cancellation of lmax against lmax + log(sum)). */
static double log_sum_exp_shifted(const float *logits, int n, double lmax) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        double d = lg(logits, i) - lmax;
        if (d != -INFINITY) sum += exp(d);
    }
    return log(sum);
}

/* log p of a token given the row's shape and shifted normaliser. */
static double lp_of(double v, row_info r, double lse, int n) {
    if (r.lmax == -INFINITY) return -log((double)n);
    if (r.lmax == INFINITY) return v == INFINITY ? -log((double)r.n_at_max) : -INFINITY;
    if (v == -INFINITY) return -INFINITY;
    return (v - r.lmax) - lse;
}

double capmoe_logprob(const float *logits, int n, int id) {
    if (!logits || n <= 0 || id < 0 || id >= n) return NAN;
    row_info r = row_scan(logits, n);
    double lse = isfinite(r.lmax) ? log_sum_exp_shifted(logits, n, r.lmax) : 0.0;
    return lp_of(lg(logits, id), r, lse, n);
}

int capmoe_top_logprobs(const float *logits, int n, int n_top, int *ids, double *lps) {
    if (!logits || n <= 0 || n_top <= 0 || !ids || !lps) return 0;
    if (n_top > n) n_top = n;
    /* Keep ids[0..c) in rank order; insert each token that beats the last. */
    int c = 0;
    for (int i = 0; i < n; i++) {
        if (c == n_top && !before(logits, i, ids[c - 1])) continue;
        int j = c < n_top ? c++ : c - 1;
        while (j > 0 && before(logits, i, ids[j - 1])) {
            ids[j] = ids[j - 1];
            j--;
        }
        ids[j] = i;
    }
    row_info r = row_scan(logits, n);
    double lse = isfinite(r.lmax) ? log_sum_exp_shifted(logits, n, r.lmax) : 0.0;
    for (int j = 0; j < c; j++) lps[j] = lp_of(lg(logits, ids[j]), r, lse, n);
    return c;
}
