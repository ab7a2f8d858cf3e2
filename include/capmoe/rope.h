/* rope.h - rotary position embeddings as transformers computes them: the
 * inverse frequencies of the default rotary embedding and of YaRN
 * (modeling_rope_utils' "default" and "yarn"), the attention factor YaRN
 * multiplies cos and sin by, the softmax scale of DeepSeek-V3's latent
 * attention, and the rotation in either layout. */
#ifndef CAPMOE_ROPE_H
#define CAPMOE_ROPE_H

#include "capmoe/hfconfig.h"

/* inv_freq[0 .. dim/2) of a rotary embedding over dim dimensions (float32,
 * as torch computes them) and *attention_factor (cos and sin are multiplied
 * by it; 1 for the default type). dim is c->head_dim (DeepSeek:
 * qk_rope_head_dim). */
void capmoe_rope_inv_freq(const capmoe_hfconfig *c, float *inv_freq, double *attention_factor);

/* YaRN's mscale: 1 when scale <= 1, else 0.1 * mscale * ln(scale) + 1. */
double capmoe_rope_yarn_mscale(double scale, double mscale);

/* The softmax scale of latent attention: 1 / sqrt(qk_nope_head_dim +
 * qk_rope_head_dim), times mscale(factor, mscale_all_dim)^2 with YaRN and a
 * non-zero mscale_all_dim (DeepSeek-V2 and V3 alike in transformers 5.17). */
double capmoe_rope_mla_softmax_scale(const capmoe_hfconfig *c);

/* Rotates one vector v of d dimensions in place by the table cs (cs[0 ..
 * d/2) cos, cs[d/2 .. d) sin, as capmoe_rope_table fills it): interleave
 * rotates the pairs (2i, 2i + 1) (DeepSeek's layout: V2's complex product,
 * V3 with rope_interleave), else the pairs (i, i + d/2) (ops.h's
 * capmoe_rope_apply). */
void capmoe_rope_rotate(float *v, int d, const float *cs, int interleave);

#endif
