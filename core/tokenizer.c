/* tokenizer.c - Hugging Face tokenizer.json in C: loading, added tokens,
 * the encode pipeline, the post-processor, decoding and streaming decoding.
 * The pieces (normalizers, pre-tokenizers, BPE, decoders) live in tok_*.c;
 * tok_internal.h gives the overview. */
#include "capmoe/tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "tok_internal.h"

/* ==== Types ============================================================= */

typedef struct added_tok {
    int32_t id;
    char *content;      /* as in tokenizer.json */
    char *match;        /* what is searched: content, normalized if "normalized" */
    size_t match_len;
    int special, lstrip, rstrip, single_word, normalized;
} added_tok;

/* Finds added tokens in text: candidates bucketed by first byte, longest
 * first, so the first hit at the leftmost position is the longest
 * (Aho-Corasick LeftmostLongest, as HF). */
typedef struct added_matcher {
    int *order;          /* indices into tok->added */
    int n;
    int first[257];      /* order[first[b] .. first[b+1]) start with byte b */
} added_matcher;

struct capmoe_tokenizer {
    capmoe__tok_bpe bpe;
    capmoe__tok_norm *norm;
    capmoe__tok_pretok *pretok;
    capmoe__tok_decoder *dec;
    added_tok *added;
    int n_added;
    added_matcher raw_m, norm_m; /* non-normalized / normalized added tokens */
    int n_vocab;                 /* max id + 1 over vocab and added tokens */
    const char **id_tok;         /* id -> token string (vocab or added), may be NULL */
    uint32_t *id_len;
    unsigned char *special;      /* id -> special flag of its added token */
    int32_t *post_pre, *post_suf;/* ids the post-processor puts around a sequence */
    int n_post_pre, n_post_suf;
    int bos_id, eos_id;
    char *chat_template;
};

/* ==== Added tokens ====================================================== */

static int cmp_len_desc(const void *a, const void *b, void *ctx) {
    const added_tok *t = ctx;
    const added_tok *x = &t[*(const int *)a], *y = &t[*(const int *)b];
    unsigned char fx = (unsigned char)x->match[0], fy = (unsigned char)y->match[0];
    if (fx != fy) return fx < fy ? -1 : 1;
    if (x->match_len != y->match_len) return x->match_len > y->match_len ? -1 : 1;
    return 0;
}

static int build_matcher(added_matcher *m, added_tok *t, int n, int normalized) {
    m->order = malloc((size_t)(n ? n : 1) * sizeof *m->order);
    if (!m->order) return -1;
    m->n = 0;
    for (int i = 0; i < n; i++)
        if (t[i].normalized == normalized && t[i].match_len > 0) m->order[m->n++] = i;
    qsort_r(m->order, (size_t)m->n, sizeof *m->order, cmp_len_desc, t);
    int k = 0;
    for (int b = 0; b <= 256; b++) {
        while (k < m->n && (unsigned char)t[m->order[k]].match[0] < b) k++;
        m->first[b] = k;
    }
    return 0;
}

/* Word character as Rust regex \w (letters, marks, digits, connectors). */
static int is_word_cp(uint32_t cp) {
    if (cp == '_' || capmoe__tok_is_alnum(cp)) return 1;
    if (cp < 0x80) return 0;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_MC || c == UTF8PROC_CATEGORY_ME ||
           c == UTF8PROC_CATEGORY_PC;
}

typedef struct seg {
    size_t start, end;
    int32_t id; /* -1: text to tokenize */
} seg;

typedef struct segs {
    seg *v;
    int n, cap;
} segs;

static int seg_push(segs *s, size_t a, size_t b, int32_t id) {
    if (s->n == s->cap) {
        int cap = s->cap ? s->cap * 2 : 16;
        seg *v = realloc(s->v, (size_t)cap * sizeof *v);
        if (!v) return -1;
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = (seg){a, b, id};
    return 0;
}

/* Splits text on the added tokens of matcher m (HF AddedVocabulary::
 * find_matches, with lstrip / rstrip / single_word). */
static int split_added(const capmoe_tokenizer *tok, const added_matcher *m, const char *s,
                       size_t n, segs *out) {
    size_t start_off = 0, pos = 0;
    if (m->n > 0) {
        while (pos < n) {
            unsigned char b = (unsigned char)s[pos];
            const added_tok *hit = NULL;
            for (int k = m->first[b]; k < m->first[b + 1]; k++) {
                const added_tok *t = &tok->added[m->order[k]];
                if (t->match_len <= n - pos && memcmp(s + pos, t->match, t->match_len) == 0) {
                    hit = t;
                    break;
                }
            }
            if (!hit) {
                pos++;
                continue;
            }
            size_t start = pos, stop = pos + hit->match_len;
            pos = stop;
            if (hit->single_word) {
                int l;
                int start_ok = start == 0 ||
                    !is_word_cp(capmoe__tok_utf8_next(
                        s + start - (size_t)capmoe__tok_utf8_prev_len(s, start),
                        (size_t)capmoe__tok_utf8_prev_len(s, start), &l));
                int stop_ok = stop == n || !is_word_cp(capmoe__tok_utf8_next(s + stop, n - stop, &l));
                if (!start_ok || !stop_ok) continue;
            }
            if (start < start_off) start = start_off;
            if (hit->lstrip) {
                size_t ns = start;
                while (ns > 0) {
                    int l = capmoe__tok_utf8_prev_len(s, ns), l2;
                    if (!capmoe__tok_is_whitespace(capmoe__tok_utf8_next(s + ns - (size_t)l, (size_t)l, &l2)))
                        break;
                    ns -= (size_t)l;
                }
                start = ns > start_off ? ns : start_off;
            }
            if (hit->rstrip) {
                while (stop < n) {
                    int l;
                    if (!capmoe__tok_is_whitespace(capmoe__tok_utf8_next(s + stop, n - stop, &l))) break;
                    stop += (size_t)l;
                }
                if (stop > pos) pos = stop;
            }
            if (start_off < start && seg_push(out, start_off, start, -1)) return -1;
            if (seg_push(out, start, stop, hit->id)) return -1;
            start_off = stop;
        }
    }
    if (start_off < n || n == 0) return seg_push(out, start_off, n, -1);
    return 0;
}

/* ==== Loading =========================================================== */

void capmoe_tokenizer_free(capmoe_tokenizer *tok) {
    if (!tok) return;
    capmoe__tok_bpe_free(&tok->bpe);
    capmoe__tok_norm_free(tok->norm);
    capmoe__tok_pretok_free(tok->pretok);
    capmoe__tok_decoder_free(tok->dec);
    for (int i = 0; i < tok->n_added; i++) {
        free(tok->added[i].content);
        free(tok->added[i].match);
    }
    free(tok->added);
    free(tok->raw_m.order);
    free(tok->norm_m.order);
    free(tok->id_tok);
    free(tok->id_len);
    free(tok->special);
    free(tok->post_pre);
    free(tok->post_suf);
    free(tok->chat_template);
    free(tok);
}

/* The id HF tokenizers gives the i-th added token: it ignores the "id" of
 * tokenizer.json and re-adds the tokens in order (AddedVocabulary::
 * add_tokens): an earlier added token or a vocab entry with the same content
 * keeps its id, a new one gets the next id after the vocab and the added
 * tokens so far. The ids agree with the file in any consistent tokenizer. */
static int32_t hf_added_id(const capmoe_tokenizer *tok, const char *content, int i) {
    int32_t max = -1;
    for (int k = 0; k < i; k++) {
        if (!strcmp(tok->added[k].content, content)) return tok->added[k].id;
        if (tok->added[k].id > max) max = tok->added[k].id;
    }
    int32_t v = capmoe__tok_bpe_lookup(&tok->bpe, content, strlen(content));
    if (v >= 0) return v;
    int32_t size = tok->bpe.vocab.count;
    if (max < 0) return size;
    return (max >= size || size == 0) ? max + 1 : size;
}

static int parse_added(capmoe_tokenizer *tok, const cJSON *list, const char *path,
                       capmoe_error *err) {
    if (!list || cJSON_IsNull(list)) return 0;
    if (!cJSON_IsArray(list)) return capmoe_set_error(err, "%s: \"added_tokens\" is not an array", path);
    int n = cJSON_GetArraySize(list);
    tok->added = calloc((size_t)(n ? n : 1), sizeof *tok->added);
    if (!tok->added) return capmoe_set_error(err, "%s: out of memory", path);
    const cJSON *it;
    cJSON_ArrayForEach(it, list) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(it, "id");
        const char *content = capmoe__tok_json_str(it, "content");
        if (!cJSON_IsNumber(id) || id->valuedouble < 0 || id->valuedouble >= 50000000 ||
            id->valuedouble != (double)id->valueint || !content)
            return capmoe_set_error(err, "%s: added_tokens[%d] needs an integer \"id\" and a "
                                    "\"content\" string", path, tok->n_added);
        if (!*content) continue; /* HF ignores empty added tokens */
        added_tok *t = &tok->added[tok->n_added++];
        t->id = hf_added_id(tok, content, tok->n_added - 1);
        t->special = capmoe__tok_json_bool(it, "special", 0);
        t->lstrip = capmoe__tok_json_bool(it, "lstrip", 0);
        t->rstrip = capmoe__tok_json_bool(it, "rstrip", 0);
        t->single_word = capmoe__tok_json_bool(it, "single_word", 0);
        t->normalized = capmoe__tok_json_bool(it, "normalized", !t->special);
        if (!(t->content = capmoe__tok_strdup(content)))
            return capmoe_set_error(err, "%s: out of memory", path);
        size_t cl = strlen(content);
        if (capmoe__tok_utf8_valid_prefix(content, cl) != cl)
            return capmoe_set_error(err, "%s: added token %d is not valid UTF-8", path, t->id);
        if (t->normalized && tok->norm) {
            capmoe__tok_buf b = {0};
            if (capmoe__tok_norm_apply(tok->norm, content, cl, &b, err)) {
                capmoe__tok_buf_free(&b);
                return -1;
            }
            if (capmoe__tok_buf_reserve(&b, 0)) return capmoe_set_error(err, "out of memory");
            t->match = b.p;
            t->match_len = b.n;
        } else {
            if (!(t->match = capmoe__tok_strdup(content)))
                return capmoe_set_error(err, "%s: out of memory", path);
            t->match_len = cl;
        }
    }
    return 0;
}

/* A token id written in tokenizer.json: an integral number in
 * [0, INT32_MAX] (cJSON's valueint would silently saturate or truncate). */
static int json_id(const cJSON *v, int32_t *out) {
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0) || v->valuedouble > 2147483647.0 ||
        v->valuedouble != (double)(int32_t)v->valuedouble)
        return -1;
    *out = (int32_t)v->valuedouble;
    return 0;
}

static int push_ids_from_special(const cJSON *specials, const char *name, int32_t **v, int *n,
                                 const char *path, capmoe_error *err) {
    const cJSON *sp = cJSON_GetObjectItemCaseSensitive(specials, name);
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(sp, "ids");
    if (!cJSON_IsArray(ids))
        return capmoe_set_error(err, "%s: post_processor special token \"%s\" is not defined in "
                                "\"special_tokens\"", path, name);
    const cJSON *it;
    cJSON_ArrayForEach(it, ids) {
        int32_t id;
        if (json_id(it, &id))
            return capmoe_set_error(err, "%s: post_processor special token \"%s\": id %g is not "
                                    "a token id (an integer >= 0)", path, name,
                                    cJSON_IsNumber(it) ? it->valuedouble : -1.0);
        int32_t *p = realloc(*v, (size_t)(*n + 1) * sizeof *p);
        if (!p) return capmoe_set_error(err, "out of memory");
        *v = p;
        p[(*n)++] = id;
    }
    return 0;
}

/* Wraps the current prefix/suffix with pre/suf (a processor applied after
 * the ones seen so far). */
static int wrap_post(capmoe_tokenizer *tok, const int32_t *pre, int npre, const int32_t *suf,
                     int nsuf) {
    int32_t *p = malloc((size_t)(npre + tok->n_post_pre + 1) * sizeof *p);
    int32_t *s = malloc((size_t)(nsuf + tok->n_post_suf + 1) * sizeof *s);
    if (!p || !s) {
        free(p);
        free(s);
        return -1;
    }
    if (npre) memcpy(p, pre, (size_t)npre * sizeof *p);
    if (tok->n_post_pre) memcpy(p + npre, tok->post_pre, (size_t)tok->n_post_pre * sizeof *p);
    if (tok->n_post_suf) memcpy(s, tok->post_suf, (size_t)tok->n_post_suf * sizeof *s);
    if (nsuf) memcpy(s + tok->n_post_suf, suf, (size_t)nsuf * sizeof *s);
    free(tok->post_pre);
    free(tok->post_suf);
    tok->post_pre = p;
    tok->post_suf = s;
    tok->n_post_pre += npre;
    tok->n_post_suf += nsuf;
    return 0;
}

static int parse_post(capmoe_tokenizer *tok, const cJSON *pp, const char *path, capmoe_error *err) {
    if (!pp || cJSON_IsNull(pp)) return 0;
    const char *type = capmoe__tok_json_str(pp, "type");
    if (!type) return capmoe_set_error(err, "%s: post_processor: missing \"type\"", path);
    if (!strcmp(type, "ByteLevel")) return 0; /* offsets only */
    if (!strcmp(type, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pp, "processors");
        if (!cJSON_IsArray(list))
            return capmoe_set_error(err, "%s: post_processor Sequence: missing \"processors\"", path);
        const cJSON *it;
        cJSON_ArrayForEach(it, list) if (parse_post(tok, it, path, err)) return -1;
        return 0;
    }
    int32_t *pre = NULL, *suf = NULL;
    int npre = 0, nsuf = 0, rc = 0;
    if (!strcmp(type, "TemplateProcessing")) {
        const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
        const cJSON *specials = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
        if (!cJSON_IsArray(single))
            return capmoe_set_error(err, "%s: TemplateProcessing: \"single\" is not a list", path);
        int seen_a = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, single) {
            const cJSON *st = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
            const cJSON *sq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
            if (st) {
                const char *name = capmoe__tok_json_str(st, "id");
                if (!name) {
                    rc = capmoe_set_error(err, "%s: TemplateProcessing: SpecialToken without id", path);
                    break;
                }
                rc = seen_a ? push_ids_from_special(specials, name, &suf, &nsuf, path, err)
                            : push_ids_from_special(specials, name, &pre, &npre, path, err);
                if (rc) break;
            } else if (sq) {
                const char *sid = capmoe__tok_json_str(sq, "id");
                if (!sid || strcmp(sid, "A") != 0 || seen_a) {
                    rc = capmoe_set_error(err, "%s: TemplateProcessing: \"single\" must use "
                                          "sequence A once", path);
                    break;
                }
                seen_a = 1;
            } else {
                rc = capmoe_set_error(err, "%s: TemplateProcessing: unknown template piece", path);
                break;
            }
        }
        if (!rc && !seen_a)
            rc = capmoe_set_error(err, "%s: TemplateProcessing: \"single\" lacks sequence A", path);
    } else if (!strcmp(type, "BertProcessing") || !strcmp(type, "RobertaProcessing")) {
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(pp, "cls");
        const cJSON *sep = cJSON_GetObjectItemCaseSensitive(pp, "sep");
        const cJSON *ci = cJSON_GetArrayItem(cls, 1), *si = cJSON_GetArrayItem(sep, 1);
        if (!cJSON_IsNumber(ci) || !cJSON_IsNumber(si))
            return capmoe_set_error(err, "%s: %s: needs \"cls\" and \"sep\" pairs", path, type);
        int32_t cid, sid;
        if (json_id(ci, &cid) || json_id(si, &sid))
            return capmoe_set_error(err, "%s: %s: the id of \"%s\" (%g) is not a token id (an "
                                    "integer >= 0)", path, type, json_id(ci, &cid) ? "cls" : "sep",
                                    json_id(ci, &cid) ? ci->valuedouble : si->valuedouble);
        pre = malloc(sizeof *pre);
        suf = malloc(sizeof *suf);
        if (!pre || !suf) rc = capmoe_set_error(err, "out of memory");
        else {
            pre[0] = cid;
            suf[0] = sid;
            npre = nsuf = 1;
        }
    } else {
        return capmoe_set_error(err, "%s: post_processor type \"%s\" is not supported", path, type);
    }
    if (!rc && wrap_post(tok, pre, npre, suf, nsuf)) rc = capmoe_set_error(err, "out of memory");
    free(pre);
    free(suf);
    return rc;
}

static int build_id_table(capmoe_tokenizer *tok, const char *path, capmoe_error *err) {
    int n = tok->bpe.n_ids;
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].id + 1 > n) n = tok->added[i].id + 1;
    tok->n_vocab = n;
    tok->id_tok = calloc((size_t)(n ? n : 1), sizeof *tok->id_tok);
    tok->id_len = calloc((size_t)(n ? n : 1), sizeof *tok->id_len);
    tok->special = calloc((size_t)(n ? n : 1), 1);
    if (!tok->id_tok || !tok->id_len || !tok->special)
        return capmoe_set_error(err, "%s: out of memory", path);
    for (int i = 0; i < tok->bpe.n_ids; i++) {
        tok->id_tok[i] = tok->bpe.tok[i];
        tok->id_len[i] = tok->bpe.tok_len[i];
    }
    for (int i = 0; i < tok->n_added; i++) {
        const added_tok *t = &tok->added[i];
        /* a "normalized" token decodes as its normalized form, as in HF */
        tok->id_tok[t->id] = t->normalized ? t->match : t->content;
        tok->id_len[t->id] = (uint32_t)(t->normalized ? t->match_len : strlen(t->content));
        tok->special[t->id] = (unsigned char)t->special;
    }
    for (int i = 0; i < tok->n_post_pre; i++)
        if (tok->post_pre[i] < 0 || tok->post_pre[i] >= n)
            return capmoe_set_error(err, "%s: post_processor id %d is not in the vocabulary "
                                    "(ids 0..%d)", path, tok->post_pre[i], n - 1);
    for (int i = 0; i < tok->n_post_suf; i++)
        if (tok->post_suf[i] < 0 || tok->post_suf[i] >= n)
            return capmoe_set_error(err, "%s: post_processor id %d is not in the vocabulary "
                                    "(ids 0..%d)", path, tok->post_suf[i], n - 1);
    return 0;
}

static int load_json(capmoe_tokenizer *tok, const char *path, capmoe_error *err) {
    size_t len;
    char *text = capmoe_read_file(path, &len, err);
    if (!text) return -1;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        size_t off = end ? (size_t)(end - text) : 0;
        free(text);
        return capmoe_set_error(err, "%s: malformed JSON near byte %zu", path, off);
    }
    free(text);
    int rc = -1;
    capmoe_error sub;
    sub.msg[0] = '\0';
    if (!cJSON_IsObject(root)) {
        capmoe_set_error(err, "%s: not a JSON object", path);
        goto out;
    }
    if (capmoe__tok_bpe_load(&tok->bpe, cJSON_GetObjectItemCaseSensitive(root, "model"), &sub) ||
        capmoe__tok_norm_parse(&tok->norm, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), &sub) ||
        capmoe__tok_pretok_parse(&tok->pretok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"),
                                 &sub) ||
        capmoe__tok_decoder_parse(&tok->dec, cJSON_GetObjectItemCaseSensitive(root, "decoder"), &sub)) {
        capmoe_set_error(err, "%s: %s", path, sub.msg);
        goto out;
    }
    if (parse_added(tok, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), path, err) ||
        parse_post(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), path, err) ||
        build_id_table(tok, path, err))
        goto out;
    if (build_matcher(&tok->raw_m, tok->added, tok->n_added, 0) ||
        build_matcher(&tok->norm_m, tok->added, tok->n_added, 1)) {
        capmoe_set_error(err, "%s: out of memory", path);
        goto out;
    }
    tok->bos_id = tok->n_post_pre > 0 ? tok->post_pre[0] : -1;
    tok->eos_id = tok->n_post_suf > 0 ? tok->post_suf[tok->n_post_suf - 1] : -1;
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

/* A token named in tokenizer_config.json: "text" or {"content": "text"}. */
static const char *config_token(const cJSON *cfg, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, name);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) return capmoe__tok_json_str(v, "content");
    return NULL;
}

static int load_config(capmoe_tokenizer *tok, const char *path, capmoe_error *err) {
    struct stat st;
    if (stat(path, &st) != 0 && errno == ENOENT) return 0; /* optional */
    size_t len;
    char *text = capmoe_read_file(path, &len, err);
    if (!text) return -1;
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(cfg)) {
        cJSON_Delete(cfg);
        return capmoe_set_error(err, "%s: malformed JSON", path);
    }
    int rc = 0;
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *tmpl = cJSON_IsString(ct) ? ct->valuestring : NULL;
    if (cJSON_IsArray(ct)) { /* [{"name": "default", "template": ...}, ...] */
        const cJSON *it;
        cJSON_ArrayForEach(it, ct) {
            const char *name = capmoe__tok_json_str(it, "name");
            if (name && !strcmp(name, "default")) tmpl = capmoe__tok_json_str(it, "template");
        }
    }
    if (tmpl && !(tok->chat_template = capmoe__tok_strdup(tmpl)))
        rc = capmoe_set_error(err, "%s: out of memory", path);
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    if (bos) {
        tok->bos_id = capmoe_tokenizer_token_to_id(tok, bos);
        if (tok->bos_id < 0 && !rc)
            rc = capmoe_set_error(err, "%s: bos_token \"%s\" is not a token", path, bos);
    } else if (cJSON_HasObjectItem(cfg, "bos_token")) {
        tok->bos_id = -1;
    }
    if (eos) {
        tok->eos_id = capmoe_tokenizer_token_to_id(tok, eos);
        if (tok->eos_id < 0 && !rc)
            rc = capmoe_set_error(err, "%s: eos_token \"%s\" is not a token", path, eos);
    }
    cJSON_Delete(cfg);
    return rc;
}

int capmoe_tokenizer_load_file(capmoe_tokenizer **out, const char *path, capmoe_error *err) {
    *out = NULL;
    capmoe_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok) return capmoe_set_error(err, "%s: out of memory", path);
    if (load_json(tok, path, err)) {
        capmoe_tokenizer_free(tok);
        return -1;
    }
    *out = tok;
    return 0;
}

int capmoe_tokenizer_load(capmoe_tokenizer **out, const char *dir, capmoe_error *err) {
    *out = NULL;
    char *tj = capmoe_path_join(dir, "tokenizer.json");
    char *tc = capmoe_path_join(dir, "tokenizer_config.json");
    int rc = -1;
    if (!tj || !tc) {
        capmoe_set_error(err, "%s: out of memory", dir);
    } else if (capmoe_tokenizer_load_file(out, tj, err) == 0) {
        if (load_config(*out, tc, err) == 0) rc = 0;
        else {
            capmoe_tokenizer_free(*out);
            *out = NULL;
        }
    }
    free(tj);
    free(tc);
    return rc;
}

/* ==== Encoding ========================================================== */

/* Pre-tokenizes and BPE-encodes one piece of normalized text. */
static int encode_normalized(const capmoe_tokenizer *tok, const char *s, size_t n, int origin,
                             capmoe__tok_ids *out, capmoe_error *err) {
    capmoe__tok_list pieces = {0};
    if (capmoe__tok_list_add(&pieces, s, n, origin ? CAPMOE__PIECE_ORIGIN : 0))
        return capmoe_set_error(err, "tokenizer: out of memory");
    int rc = capmoe__tok_pretok_apply(tok->pretok, &pieces, err);
    for (int i = 0; i < pieces.n && !rc; i++)
        rc = capmoe__tok_bpe_word(&tok->bpe, CAPMOE__PIECE(&pieces, i), pieces.len[i], out, err);
    capmoe__tok_list_free(&pieces);
    return rc;
}

/* Normalizes a stretch of raw text (no non-normalized added token in it),
 * splits it on normalized added tokens and encodes the rest. */
static int encode_section(const capmoe_tokenizer *tok, const char *s, size_t n, int origin,
                          capmoe__tok_ids *out, capmoe_error *err) {
    capmoe__tok_buf norm = {0};
    segs sg = {0};
    int rc = capmoe__tok_norm_apply(tok->norm, s, n, &norm, err);
    if (!rc && capmoe__tok_buf_reserve(&norm, 0)) rc = capmoe_set_error(err, "out of memory");
    if (!rc && split_added(tok, &tok->norm_m, norm.p, norm.n, &sg))
        rc = capmoe_set_error(err, "tokenizer: out of memory");
    for (int i = 0; i < sg.n && !rc; i++) {
        if (sg.v[i].id >= 0) {
            if (capmoe__tok_ids_push(out, sg.v[i].id)) rc = capmoe_set_error(err, "out of memory");
        } else if (sg.v[i].end > sg.v[i].start) {
            rc = encode_normalized(tok, norm.p + sg.v[i].start, sg.v[i].end - sg.v[i].start,
                                   origin && sg.v[i].start == 0, out, err);
        }
    }
    free(sg.v);
    capmoe__tok_buf_free(&norm);
    return rc;
}

int capmoe_tokenizer_encode(const capmoe_tokenizer *tok, const char *text, size_t len,
                            int add_special, int32_t **ids, int *n_ids, capmoe_error *err) {
    *ids = NULL;
    *n_ids = 0;
    if (!text && len) return capmoe_set_error(err, "tokenizer: NULL text");
    if (!text) text = "";
    if (len > (size_t)1 << 30) return capmoe_set_error(err, "tokenizer: text too long (%zu bytes)", len);
    size_t valid = capmoe__tok_utf8_valid_prefix(text, len);
    if (valid != len)
        return capmoe_set_error(err, "text is not valid UTF-8 (bad byte 0x%02X at offset %zu)",
                                (unsigned char)text[valid], valid);
    capmoe__tok_ids out = {0};
    segs sg = {0};
    int rc = 0;
    if (add_special)
        for (int i = 0; i < tok->n_post_pre && !rc; i++)
            if (capmoe__tok_ids_push(&out, tok->post_pre[i])) rc = -1;
    if (!rc && split_added(tok, &tok->raw_m, text, len, &sg)) rc = -1;
    if (rc) rc = capmoe_set_error(err, "tokenizer: out of memory");
    for (int i = 0; i < sg.n && !rc; i++) {
        if (sg.v[i].id >= 0) {
            if (capmoe__tok_ids_push(&out, sg.v[i].id)) rc = capmoe_set_error(err, "out of memory");
        } else {
            rc = encode_section(tok, text + sg.v[i].start, sg.v[i].end - sg.v[i].start,
                                sg.v[i].start == 0, &out, err);
        }
    }
    if (add_special)
        for (int i = 0; i < tok->n_post_suf && !rc; i++)
            if (capmoe__tok_ids_push(&out, tok->post_suf[i])) rc = capmoe_set_error(err, "out of memory");
    free(sg.v);
    if (rc) {
        free(out.v);
        return -1;
    }
    if (!out.v && !(out.v = malloc(sizeof *out.v))) return capmoe_set_error(err, "out of memory");
    *ids = out.v;
    *n_ids = out.n;
    return 0;
}

/* ==== Decoding ========================================================== */

static int check_id(const capmoe_tokenizer *tok, int32_t id, capmoe_error *err) {
    if (id < 0 || id >= tok->n_vocab)
        return capmoe_set_error(err, "token id %d is out of range (vocabulary has %d ids)", (int)id,
                                tok->n_vocab);
    if (!tok->id_tok[id]) return capmoe_set_error(err, "token id %d has no token", (int)id);
    return 0;
}

static int decode_buf(const capmoe_tokenizer *tok, const int32_t *ids, int n, int skip_special,
                      capmoe__tok_buf *out, capmoe_error *err) {
    capmoe__tok_list t = {0};
    for (int i = 0; i < n; i++) {
        if (check_id(tok, ids[i], err)) {
            capmoe__tok_list_free(&t);
            return -1;
        }
        if (skip_special && tok->special[ids[i]]) continue;
        if (capmoe__tok_list_add(&t, tok->id_tok[ids[i]], tok->id_len[ids[i]], 0)) {
            capmoe__tok_list_free(&t);
            return capmoe_set_error(err, "out of memory");
        }
    }
    int rc = 0;
    if (tok->dec) rc = capmoe__tok_decoder_apply(tok->dec, &t, err);
    for (int i = 0; i < t.n && !rc; i++) {
        if (!tok->dec && i > 0 && capmoe__tok_buf_putc(out, ' ')) rc = -1;
        if (!rc && capmoe__tok_buf_put(out, CAPMOE__PIECE(&t, i), t.len[i])) rc = -1;
        if (rc) rc = capmoe_set_error(err, "out of memory");
    }
    if (!rc && capmoe__tok_buf_reserve(out, 0)) rc = capmoe_set_error(err, "out of memory");
    capmoe__tok_list_free(&t);
    return rc;
}

int capmoe_tokenizer_decode(const capmoe_tokenizer *tok, const int32_t *ids, int n_ids,
                            int skip_special, char **text, size_t *len, capmoe_error *err) {
    capmoe__tok_buf b = {0};
    *text = NULL;
    if (len) *len = 0;
    if (n_ids < 0 || (n_ids > 0 && !ids)) return capmoe_set_error(err, "decode: bad id list");
    if (decode_buf(tok, ids, n_ids, skip_special, &b, err)) {
        capmoe__tok_buf_free(&b);
        return -1;
    }
    *text = b.p;
    if (len) *len = b.n;
    return 0;
}

/* ==== Lookups =========================================================== */

int capmoe_tokenizer_n_vocab(const capmoe_tokenizer *tok) { return tok->n_vocab; }

int capmoe_tokenizer_token_to_id(const capmoe_tokenizer *tok, const char *content) {
    if (!content) return -1;
    for (int i = 0; i < tok->n_added; i++)
        if (!strcmp(tok->added[i].content, content)) return tok->added[i].id;
    return capmoe__tok_bpe_lookup(&tok->bpe, content, strlen(content));
}

const char *capmoe_tokenizer_id_to_token(const capmoe_tokenizer *tok, int id) {
    if (id < 0 || id >= tok->n_vocab) return NULL;
    return tok->id_tok[id];
}

int capmoe_tokenizer_is_special(const capmoe_tokenizer *tok, int id) {
    return id >= 0 && id < tok->n_vocab && tok->special[id];
}

int capmoe_tokenizer_bos_id(const capmoe_tokenizer *tok) { return tok->bos_id; }
int capmoe_tokenizer_eos_id(const capmoe_tokenizer *tok) { return tok->eos_id; }
const char *capmoe_tokenizer_chat_template(const capmoe_tokenizer *tok) { return tok->chat_template; }

/* ==== Streaming decoding ================================================ */

/* The stream keeps a window of ids and decodes it whole at each step; the
 * text grows by the difference. Output stops before a trailing U+FFFD run
 * (an incomplete character, or byte-fallback tokens still to come). After a
 * step that ends cleanly, the window restarts at a later id p when the text
 * from p on can only grow the same way as the text of all ids:
 *   - id p is not skipped, and does not continue a run of <0xXX> byte tokens
 *     (ByteFallback decodes a whole run at once);
 *   - decode(ids[p..]) is non-empty (so a Strip of leading spaces or the
 *     Metaspace rule for the first token only touch text already emitted)
 *     and ends cleanly (the byte-level UTF-8 decoder is between characters).
 * Only the last few positions are tried, so each push costs O(1) decodes
 * of a short window, while the output stays that of decoding all ids. */

static int is_byte_token(const capmoe_tokenizer *tok, int32_t id) {
    const char *t = tok->id_tok[id];
    if (tok->id_len[id] != 6 || memcmp(t, "<0x", 3) != 0 || t[5] != '>') return 0;
    for (int k = 3; k < 5; k++)
        if (!((t[k] >= '0' && t[k] <= '9') || (t[k] >= 'a' && t[k] <= 'f') || (t[k] >= 'A' && t[k] <= 'F')))
            return 0;
    return 1;
}

static size_t trailing_fffd(const char *p, size_t n);
static int stream_show(capmoe_detok_stream *s, const char *t, size_t n);

/* Restarts the window of s at the latest safe position (see above). */
static void stream_slide(capmoe_detok_stream *s) {
    const capmoe_tokenizer *tok = s->tok;
    int lo = s->n_ids > 8 ? s->n_ids - 8 : 1;
    for (int p = s->n_ids - 1; p >= lo; p--) {
        int32_t id = s->ids[p];
        if (s->skip_special && tok->special[id]) continue;
        if (is_byte_token(tok, id)) {
            int q = p - 1;
            while (q >= 0 && s->skip_special && tok->special[s->ids[q]]) q--;
            if (q < 0 || is_byte_token(tok, s->ids[q])) continue;
        }
        capmoe__tok_buf t = {0};
        capmoe_error e;
        int ok = decode_buf(tok, s->ids + p, s->n_ids - p, s->skip_special, &t, &e) == 0 && t.n > 0 &&
                 trailing_fffd(t.p, t.n) == t.n;
        if (ok && stream_show(s, t.p, t.n) == 0) {
            memmove(s->ids, s->ids + p, (size_t)(s->n_ids - p) * sizeof *s->ids);
            s->n_ids -= p;
        } else {
            ok = 0;
        }
        capmoe__tok_buf_free(&t);
        if (ok) return;
    }
}

void capmoe_detok_stream_init(capmoe_detok_stream *s, const capmoe_tokenizer *tok, int skip_special) {
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->skip_special = skip_special;
}

void capmoe_detok_stream_free(capmoe_detok_stream *s) {
    if (!s) return;
    free(s->ids);
    free(s->shown);
    s->ids = NULL;
    s->shown = NULL;
    s->n_ids = s->cap_ids = 0;
    s->emitted = s->shown_cap = 0;
}

static size_t trailing_fffd(const char *p, size_t n) {
    size_t k = n;
    while (k >= 3 && memcmp(p + k - 3, "\xEF\xBF\xBD", 3) == 0) k -= 3;
    return k;
}

static int emit(char **text, size_t *len, const char *p, size_t n, capmoe_error *err) {
    char *o = malloc(n + 1);
    if (!o) return capmoe_set_error(err, "out of memory");
    if (n) memcpy(o, p, n);
    o[n] = '\0';
    *text = o;
    if (len) *len = n;
    return 0;
}

/* Remembers t[0..n) as the text returned so far for the current window. */
static int stream_show(capmoe_detok_stream *s, const char *t, size_t n) {
    if (n + 1 > s->shown_cap) {
        size_t cap = s->shown_cap ? s->shown_cap : 64;
        while (cap < n + 1) cap *= 2;
        char *p = realloc(s->shown, cap);
        if (!p) return -1;
        s->shown = p;
        s->shown_cap = cap;
    }
    if (n) memcpy(s->shown, t, n);
    s->emitted = n;
    return 0;
}

/* Emits the part of the window's text t (clean up to end) not returned yet.
 * The text may shrink back for a while (a U+FFFD run that may still become
 * a character); output waits until it grows past what was returned. If the
 * returned part itself changed - HF ByteFallback turns a whole run of
 * <0xXX> tokens into U+FFFDs once the run turns out invalid - it cannot be
 * taken back: the stream continues from the new text at a character
 * boundary, so every piece stays valid UTF-8. */
static int stream_emit(capmoe_detok_stream *s, const capmoe__tok_buf *t, size_t end, char **text,
                       size_t *len, capmoe_error *err) {
    size_t e = s->emitted, k = end < e ? end : e;
    if (k == 0 || !memcmp(t->p, s->shown, k)) {
        if (end <= e) return emit(text, len, "", 0, err);
        if (emit(text, len, t->p + e, end - e, err)) return -1;
    } else {
        size_t start = k;
        while (start < end && ((unsigned char)t->p[start] & 0xC0) == 0x80) start++;
        if (emit(text, len, t->p + start, end - start, err)) return -1;
    }
    if (stream_show(s, t->p, end)) {
        free(*text);
        *text = NULL;
        return capmoe_set_error(err, "out of memory");
    }
    return 0;
}

int capmoe_detok_stream_push(capmoe_detok_stream *s, int32_t id, char **text, size_t *len,
                             capmoe_error *err) {
    const capmoe_tokenizer *tok = s->tok;
    *text = NULL;
    if (len) *len = 0;
    if (check_id(tok, id, err)) return -1;
    if (s->n_ids == s->cap_ids) {
        int cap = s->cap_ids ? s->cap_ids * 2 : 16;
        int32_t *v = realloc(s->ids, (size_t)cap * sizeof *v);
        if (!v) return capmoe_set_error(err, "out of memory");
        s->ids = v;
        s->cap_ids = cap;
    }
    s->ids[s->n_ids++] = id;
    capmoe__tok_buf b = {0};
    if (decode_buf(tok, s->ids, s->n_ids, s->skip_special, &b, err)) {
        s->n_ids--;
        capmoe__tok_buf_free(&b);
        return -1;
    }
    size_t end = trailing_fffd(b.p, b.n);
    int rc = stream_emit(s, &b, end, text, len, err);
    if (rc == 0 && end == b.n) stream_slide(s);
    capmoe__tok_buf_free(&b);
    return rc;
}

int capmoe_detok_stream_finish(capmoe_detok_stream *s, char **text, size_t *len,
                               capmoe_error *err) {
    *text = NULL;
    if (len) *len = 0;
    capmoe__tok_buf b = {0};
    if (decode_buf(s->tok, s->ids, s->n_ids, s->skip_special, &b, err)) {
        capmoe__tok_buf_free(&b);
        return -1;
    }
    int rc = stream_emit(s, &b, b.n, text, len, err);
    capmoe__tok_buf_free(&b);
    return rc;
}
