/* chat_native.c - the built-in chat template families, rendered by C code
 * written from the real templates. A model's own template is rendered by
 * the Jinja interpreter (core/jinja.c, through core/chat.c); these renderers
 * serve `--chat-template NAME` (a family by name, when a model's template
 * cannot be used) and capmoe_chat_detect (which family a template is):
 *
 *   ChatML      "<|im_start|>" ... plain (OpenHermes style: every message
 *               <|im_start|>{role}\n{content}<|im_end|>\n, after bos_token
 *               when the template starts with it) and Qwen (a
 *               default system message when the template injects one, tool
 *               responses as <tool_response> user turns, and Qwen3's
 *               <think> handling of assistant turns after the last query)
 *   Mistral     "[INST]": the v0 template (no system role), the v1 template
 *               of Mistral-7B-Instruct-v0.2 / Mixtral-8x7B-Instruct-v0.1
 *               (system prepended to the first user turn), and Llama-2
 *               (<<SYS>> block, content.strip())
 *   OLMoE/Tulu  "<|user|>" / "<|assistant|>" with eos after assistant turns,
 *               with or without a leading bos_token
 *
 * Whatever the Jinja would reject with raise_exception (roles that do not
 * alternate, a system role where none is allowed) is an error here too.
 * bos_token / eos_token are the tokenizer's; an absent one renders as "",
 * like an undefined Jinja variable. */
#include "capmoe/chat.h"
#include "chat_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum variant {
    V_NONE,
    V_CHATML,      /* plain */
    V_QWEN,        /* Qwen2/2.5/3 */
    V_MISTRAL_V0,
    V_MISTRAL_V1,
    V_LLAMA2,
    V_TULU
};

typedef struct style {
    enum variant v;
    int think;            /* Qwen3 reasoning handling */
    int eos_space;        /* Mistral v0.1: eos_token + ' ' */
    int bos;              /* Tulu, ChatML: the template starts with bos_token */
    char *default_system; /* Qwen: injected when no system message */
} style;

/* ---- small string builder ---------------------------------------------- */

typedef struct sb {
    char *p;
    size_t n, cap;
    int oom;
} sb;

static void sb_putn(sb *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void sb_put(sb *b, const char *s) { sb_putn(b, s ? s : "", s ? strlen(s) : 0); }

/* ---- detection ----------------------------------------------------------- */

static int has(const char *t, const char *s) { return strstr(t, s) != NULL; }

/* Unescapes a Jinja string literal body of n bytes. */
static char *jinja_unescape(const char *s, size_t n) {
    char *o = malloc(n + 1), *q = o;
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\\' && i + 1 < n) {
            char e = s[++i];
            *q++ = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
            *q++ = s[i];
        }
    }
    *q = '\0';
    return o;
}

/* The default system message of a Qwen template: a string literal
 * '<|im_start|>system\n...<|im_end|>' that carries text after "system\n". */
static char *qwen_default_system(const char *t) {
    static const char *marks[] = {"'<|im_start|>system\\n", "\"<|im_start|>system\\n"};
    for (int k = 0; k < 2; k++) {
        const char *p = t;
        while ((p = strstr(p, marks[k])) != NULL) {
            const char *body = p + strlen(marks[k]);
            char quote = marks[k][0];
            const char *end = strstr(body, "<|im_end|>");
            const char *q = strchr(body, quote);
            if (end && (!q || q > end) && end > body) return jinja_unescape(body, (size_t)(end - body));
            p = body;
        }
    }
    return NULL;
}

/* The template opens with {{ bos_token }} (any spacing, optional "-"). */
static int starts_with_bos(const char *t) {
    while (*t == ' ' || *t == '\n') t++;
    if (strncmp(t, "{{", 2) != 0) return 0;
    t += 2;
    if (*t == '-') t++;
    while (*t == ' ') t++;
    if (strncmp(t, "bos_token", 9) != 0) return 0;
    t += 9;
    while (*t == ' ') t++;
    if (*t == '-') t++;
    return strncmp(t, "}}", 2) == 0;
}

static enum variant detect(const char *t, style *st) {
    memset(st, 0, sizeof *st);
    if (!t) return V_NONE;
    st->bos = starts_with_bos(t);
    if (has(t, "<|im_start|>") && has(t, "<|im_end|>")) {
        st->default_system = qwen_default_system(t);
        st->think = has(t, "</think>") && has(t, "reasoning_content");
        if (st->default_system || st->think || has(t, "<tool_response>")) return st->v = V_QWEN;
        return st->v = V_CHATML;
    }
    if (has(t, "[INST]") && has(t, "[/INST]")) {
        if (has(t, "<<SYS>>") && has(t, "content.strip()")) return st->v = V_LLAMA2;
        if (has(t, "' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]'") &&
            has(t, "' ' + message['content'] + eos_token"))
            return st->v = V_MISTRAL_V1;
        if (has(t, "'[INST] ' + message['content'] + ' [/INST]'") &&
            has(t, "message['content'] + eos_token") && !has(t, "system_message")) {
            st->eos_space = has(t, "eos_token + ' '");
            return st->v = V_MISTRAL_V0;
        }
        return V_NONE;
    }
    if (has(t, "<|user|>") && has(t, "<|assistant|>") && has(t, "not loop.last") &&
        has(t, "eos_token"))
        return st->v = V_TULU;
    return V_NONE;
}

capmoe_chat_family capmoe_chat_detect(const char *template_str) {
    style st;
    enum variant v = detect(template_str, &st);
    free(st.default_system);
    switch (v) {
    case V_CHATML:
    case V_QWEN: return CAPMOE_CHAT_CHATML;
    case V_MISTRAL_V0:
    case V_MISTRAL_V1:
    case V_LLAMA2: return CAPMOE_CHAT_MISTRAL;
    case V_TULU: return CAPMOE_CHAT_OLMOE;
    case V_NONE: break;
    }
    return CAPMOE_CHAT_NONE;
}

/* ---- helpers mirroring the Python string methods the templates use ------- */

static int py_space(const unsigned char *s, size_t n, size_t *len) {
    /* str.isspace() code points: \t\n\v\f\r, \x1c-\x1f, space, U+0085,
     * U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000 */
    *len = 1;
    if (n >= 1 && ((s[0] >= 0x09 && s[0] <= 0x0D) || (s[0] >= 0x1C && s[0] <= 0x20))) return 1;
    if (n >= 2 && s[0] == 0xC2 && (s[1] == 0x85 || s[1] == 0xA0)) { *len = 2; return 1; }
    if (n >= 3) {
        uint32_t cp = ((uint32_t)(s[0] & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        if ((s[0] & 0xF0) == 0xE0 &&
            (cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
             cp == 0x202F || cp == 0x205F || cp == 0x3000)) {
            *len = 3;
            return 1;
        }
    }
    return 0;
}

/* Python str.strip() (whitespace) of s into [*a, *b). */
static void py_strip(const char *s, size_t *a, size_t *b) {
    const unsigned char *u = (const unsigned char *)s;
    size_t n = strlen(s), i = 0, l;
    while (i < n && py_space(u + i, n - i, &l)) i += l;
    size_t e = n;
    while (e > i) {
        size_t k = e - 1; /* start of the last character */
        while (k > i && (u[k] & 0xC0) == 0x80) k--;
        if (!py_space(u + k, e - k, &l) || k + l != e) break;
        e = k;
    }
    *a = i;
    *b = e;
}

static void strip_nl(const char *s, size_t n, size_t *a, size_t *b, int left, int right) {
    size_t i = 0, e = n;
    while (left && i < e && s[i] == '\n') i++;
    while (right && e > i && s[e - 1] == '\n') e--;
    *a = i;
    *b = e;
}

/* Last occurrence of needle in s[0..n). */
static const char *rfind(const char *s, size_t n, const char *needle) {
    size_t m = strlen(needle);
    if (m > n) return NULL;
    for (size_t i = n - m + 1; i-- > 0;)
        if (!memcmp(s + i, needle, m)) return s + i;
    return NULL;
}

static const char *role_of(const capmoe_chat_msg *m) { return m->role ? m->role : ""; }
static const char *content_of(const capmoe_chat_msg *m) { return m->content ? m->content : ""; }
static int is_role(const capmoe_chat_msg *m, const char *r) { return !strcmp(role_of(m), r); }

/* ---- renderers ------------------------------------------------------------ */

static void put_turn(sb *b, const char *role, const char *content) {
    sb_put(b, "<|im_start|>");
    sb_put(b, role);
    sb_put(b, "\n");
    sb_put(b, content);
    sb_put(b, "<|im_end|>\n");
}

static int render_qwen(const style *st, const capmoe_chat_msg *m, int n, int gen, sb *b) {
    if (is_role(&m[0], "system")) put_turn(b, "system", content_of(&m[0]));
    else if (st->default_system) put_turn(b, "system", st->default_system);
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--) {
        const char *c = content_of(&m[i]);
        size_t cl = strlen(c);
        int is_resp = cl >= 15 && !strncmp(c, "<tool_response>", 15) && cl >= 16 &&
                      !strcmp(c + cl - 16, "</tool_response>");
        if (is_role(&m[i], "user") && !is_resp) {
            last_query = i;
            break;
        }
    }
    for (int i = 0; i < n; i++) {
        const char *role = role_of(&m[i]), *c = content_of(&m[i]);
        if (!strcmp(role, "user") || (!strcmp(role, "system") && i > 0)) {
            put_turn(b, role, c);
        } else if (!strcmp(role, "assistant")) {
            if (!st->think) {
                put_turn(b, role, c);
                continue;
            }
            size_t cl = strlen(c), ca = 0, cb = cl, ra = 0, rb = 0;
            const char *reason = "";
            const char *close = strstr(c, "</think>");
            if (close) {
                const char *last = rfind(c, cl, "</think>");
                size_t off = (size_t)(last - c) + 8;
                strip_nl(c + off, cl - off, &ca, &cb, 1, 0);
                ca += off;
                cb += off;
                /* reasoning: before the first </think>, rstrip \n, after the last <think>, lstrip \n */
                size_t pre = (size_t)(close - c), a2, b2;
                strip_nl(c, pre, &a2, &b2, 0, 1);
                const char *open = rfind(c, b2, "<think>");
                size_t s0 = open ? (size_t)(open - c) + 7 : 0;
                strip_nl(c + s0, b2 - s0, &ra, &rb, 1, 0);
                ra += s0;
                rb += s0;
                reason = c;
            }
            int has_reason = rb > ra;
            sb_put(b, "<|im_start|>assistant\n");
            if (i > last_query && (i == n - 1 || has_reason)) {
                size_t x = ra, y = rb, p, q;
                strip_nl(reason + x, y - x, &p, &q, 1, 1);
                sb_put(b, "<think>\n");
                sb_putn(b, reason + x + p, q - p);
                sb_put(b, "\n</think>\n\n");
                strip_nl(c + ca, cb - ca, &p, &q, 1, 0);
                sb_putn(b, c + ca + p, cb - ca - p);
            } else {
                sb_putn(b, c + ca, cb - ca);
            }
            sb_put(b, "<|im_end|>\n");
        } else if (!strcmp(role, "tool")) {
            if (i == 0 || !is_role(&m[i - 1], "tool")) sb_put(b, "<|im_start|>user");
            sb_put(b, "\n<tool_response>\n");
            sb_put(b, c);
            sb_put(b, "\n</tool_response>");
            if (i == n - 1 || !is_role(&m[i + 1], "tool")) sb_put(b, "<|im_end|>\n");
        }
    }
    if (gen) sb_put(b, "<|im_start|>assistant\n");
    return 0;
}

static int alternation_error(capmoe_error *err, enum variant v) {
    return capmoe_set_error(err, "chat template: %sconversation roles must alternate "
                            "user/assistant/user/assistant/...",
                            v == V_MISTRAL_V1 ? "after the optional system message, " : "");
}

static int render_mistral(const style *st, const capmoe_chat_msg *m, int n, const char *bos,
                          const char *eos, sb *b, capmoe_error *err) {
    const char *system = NULL;
    int first = 0;
    if (st->v != V_MISTRAL_V0 && is_role(&m[0], "system")) {
        system = content_of(&m[0]);
        first = 1;
    }
    if (st->v != V_LLAMA2) sb_put(b, bos);
    for (int i = first; i < n; i++) {
        int j = i - first;
        int user = is_role(&m[i], "user");
        if (user != (j % 2 == 0)) return alternation_error(err, st->v);
        const char *c = content_of(&m[i]);
        if (st->v == V_LLAMA2) {
            sb content = {0};
            if (j == 0 && system) {
                sb_put(&content, "<<SYS>>\n");
                sb_put(&content, system);
                sb_put(&content, "\n<</SYS>>\n\n");
            }
            sb_put(&content, c);
            if (content.oom) return capmoe_set_error(err, "chat: out of memory");
            size_t a, e;
            py_strip(content.p ? content.p : "", &a, &e);
            if (user) {
                sb_put(b, bos);
                sb_put(b, "[INST] ");
                sb_putn(b, content.p + a, e - a);
                sb_put(b, " [/INST]");
            } else if (is_role(&m[i], "assistant")) {
                sb_put(b, " ");
                sb_putn(b, content.p + a, e - a);
                sb_put(b, " ");
                sb_put(b, eos);
            }
            free(content.p);
            continue;
        }
        if (user) {
            sb_put(b, st->v == V_MISTRAL_V1 ? " [INST] " : "[INST] ");
            if (j == 0 && system) {
                sb_put(b, system);
                sb_put(b, "\n\n");
            }
            sb_put(b, c);
            sb_put(b, " [/INST]");
        } else if (is_role(&m[i], "assistant")) {
            if (st->v == V_MISTRAL_V1) sb_put(b, " ");
            sb_put(b, c);
            sb_put(b, eos);
            if (st->eos_space) sb_put(b, " ");
        } else {
            return capmoe_set_error(err, "chat template: role \"%s\" is not supported: only user "
                                    "and assistant roles%s", role_of(&m[i]),
                                    st->v == V_MISTRAL_V1 ? ", with the exception of an initial "
                                                            "optional system message" : "");
        }
    }
    return 0;
}

static void render_tulu(const style *st, const capmoe_chat_msg *m, int n, int gen,
                        const char *bos, const char *eos, sb *b) {
    if (st->bos) sb_put(b, bos);
    for (int i = 0; i < n; i++) {
        const char *c = content_of(&m[i]);
        if (is_role(&m[i], "system") || is_role(&m[i], "user")) {
            sb_put(b, is_role(&m[i], "system") ? "<|system|>\n" : "<|user|>\n");
            sb_put(b, c);
            sb_put(b, "\n");
        } else if (is_role(&m[i], "assistant")) {
            sb_put(b, "<|assistant|>\n");
            sb_put(b, c);
            sb_put(b, eos);
            if (i != n - 1) sb_put(b, "\n");
        }
        if (i == n - 1 && gen) sb_put(b, "<|assistant|>\n");
    }
}

struct capmoe__chat_style {
    style st;
};

static const struct {
    const char *name;
    enum variant v;
    int think, bos;
    const char *default_system;
} BUILTINS[] = {
    {"chatml", V_CHATML, 0, 0, NULL},
    {"qwen2.5", V_QWEN, 0, 0, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."},
    {"qwen3", V_QWEN, 1, 0, NULL},
    {"mistral", V_MISTRAL_V1, 0, 0, NULL},
    {"llama2", V_LLAMA2, 0, 0, NULL},
    {"olmoe", V_TULU, 0, 1, NULL},
};

const char *capmoe__chat_builtin_names(void) { return "chatml, qwen2.5, qwen3, mistral, llama2, olmoe"; }

capmoe__chat_style *capmoe__chat_builtin(const char *name) {
    for (size_t i = 0; i < sizeof BUILTINS / sizeof BUILTINS[0]; i++) {
        if (strcmp(BUILTINS[i].name, name) != 0) continue;
        capmoe__chat_style *s = calloc(1, sizeof *s);
        if (!s) return NULL;
        s->st.v = BUILTINS[i].v;
        s->st.think = BUILTINS[i].think;
        s->st.bos = BUILTINS[i].bos;
        if (BUILTINS[i].default_system && !(s->st.default_system = strdup(BUILTINS[i].default_system))) {
            free(s);
            return NULL;
        }
        return s;
    }
    return NULL;
}

void capmoe__chat_style_free(capmoe__chat_style *s) {
    if (!s) return;
    free(s->st.default_system);
    free(s);
}

int capmoe__chat_native_render(const capmoe__chat_style *cs, const char *bos, const char *eos,
                               const capmoe_chat_msg *msgs, int n_msgs, int add_generation_prompt,
                               char **prompt, capmoe_error *err) {
    *prompt = NULL;
    const style *st = &cs->st;
    if (n_msgs <= 0 || !msgs) return capmoe_set_error(err, "chat: no messages");
    sb b = {0};
    int rc = 0;
    switch (st->v) {
    case V_CHATML:
        if (st->bos) sb_put(&b, bos);
        for (int i = 0; i < n_msgs; i++) put_turn(&b, role_of(&msgs[i]), content_of(&msgs[i]));
        if (add_generation_prompt) sb_put(&b, "<|im_start|>assistant\n");
        break;
    case V_QWEN: rc = render_qwen(st, msgs, n_msgs, add_generation_prompt, &b); break;
    case V_MISTRAL_V0:
    case V_MISTRAL_V1:
    case V_LLAMA2: rc = render_mistral(st, msgs, n_msgs, bos ? bos : "", eos ? eos : "", &b, err); break;
    case V_TULU: render_tulu(st, msgs, n_msgs, add_generation_prompt, bos ? bos : "", eos ? eos : "", &b); break;
    case V_NONE: break;
    }
    if (!rc && b.oom) rc = capmoe_set_error(err, "chat: out of memory");
    if (rc) {
        free(b.p);
        return -1;
    }
    if (!b.p) sb_put(&b, "");
    if (b.oom) return capmoe_set_error(err, "chat: out of memory");
    *prompt = b.p;
    return 0;
}
