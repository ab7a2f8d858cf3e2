/* rope.c - rotary position embeddings: inverse frequencies (default, YaRN)
 * and the rotation, as transformers' modeling_rope_utils and the DeepSeek
 * models compute them. */
#include "capmoe/rope.h"

#include <math.h>

#include "capmoe/ops.h"

double capmoe_rope_yarn_mscale(double scale, double mscale) {
    return scale <= 1 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

/* The dimension whose wavelength makes num_rotations turns over
 * max_position positions (YaRN). */
static double correction_dim(double num_rotations, int dim, double base, int max_position) {
    return (dim * log((double)max_position / (num_rotations * 2 * M_PI))) / (2 * log(base));
}

void capmoe_rope_inv_freq(const capmoe_hfconfig *c, float *inv_freq, double *attention_factor) {
    const capmoe_rope_cfg *r = &c->rope;
    int dim = c->head_dim, half = dim / 2;
    *attention_factor = 1.0;
    if (r->type != CAPMOE_ROPE_YARN) {
        /* As Hugging Face: 1 / theta^(2i / dim) in float32. */
        for (int i = 0; i < half; i++) {
            float expo = (float)(2 * i) / (float)dim;
            inv_freq[i] = 1.0f / powf((float)c->rope_theta, expo);
        }
        return;
    }
    double factor = r->factor;
    if (r->attention_factor > 0) *attention_factor = r->attention_factor;
    else if (r->mscale != 0 && r->mscale_all_dim != 0)
        *attention_factor = capmoe_rope_yarn_mscale(factor, r->mscale) /
                            capmoe_rope_yarn_mscale(factor, r->mscale_all_dim);
    else *attention_factor = capmoe_rope_yarn_mscale(factor, 1.0);
    /* the blend of interpolated and extrapolated frequencies over a ramp
     * between the dimensions where beta_fast and beta_slow turns fit in the
     * original context (Python doubles), the rest in float32 as torch */
    double base = c->rope_theta;
    double low = correction_dim(r->beta_fast, dim, base, r->original_max_position);
    double high = correction_dim(r->beta_slow, dim, base, r->original_max_position);
    if (r->truncate) {
        low = floor(low);
        high = ceil(high);
    }
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001;
    float ffactor = (float)factor;
    for (int i = 0; i < half; i++) {
        float pos = powf((float)base, (float)(2 * i) / (float)dim);
        float extrapolation = 1.0f / pos, interpolation = 1.0f / (ffactor * pos);
        float ramp = ((float)i - (float)low) / (float)(high - low);
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float extra_factor = 1.0f - ramp;
        inv_freq[i] = interpolation * (1.0f - extra_factor) + extrapolation * extra_factor;
    }
}

double capmoe_rope_mla_softmax_scale(const capmoe_hfconfig *c) {
    double scale = 1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim));
    if (c->rope.type == CAPMOE_ROPE_YARN && c->rope.mscale_all_dim != 0) {
        double m = capmoe_rope_yarn_mscale(c->rope.factor, c->rope.mscale_all_dim);
        scale = scale * m * m;
    }
    return scale;
}

void capmoe_rope_rotate(float *v, int d, const float *cs, int interleave) {
    if (!interleave) {
        capmoe_rope_apply(v, d, cs);
        return;
    }
    int h = d / 2;
    for (int i = 0; i < h; i++) {
        float c = cs[i], s = cs[h + i];
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = a * s + b * c;
    }
}
