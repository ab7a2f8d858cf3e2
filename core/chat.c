/* chat.c - chat templates: finding a model's template as transformers does
 * (--chat-template override, chat_template.jinja, tokenizer_config.json's
 * chat_template string or named list), compiling it once with the Jinja
 * interpreter (core/jinja.c), and rendering conversations with the
 * variables of apply_chat_template. Built-in families (core/chat_native.c)
 * serve an override by name. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "capmoe/chat.h"
#include "capmoe/jinja.h"
#include "chat_internal.h"

struct capmoe_chat {
    char *source;                /* where the template comes from (for logs) */
    capmoe_jinja *tmpl;          /* the Jinja template, or NULL */
    capmoe_jinja *tool_tmpl;     /* tokenizer_config.json's "tool_use" template, or NULL */
    capmoe__chat_style *native;  /* a built-in family, or NULL */
    char *tokens_json;           /* the special tokens as JSON members: "\"bos_token\":\"<s>\"," */
    char *bos, *eos;             /* their texts, for the built-in families (NULL: none) */
    capmoe_chat_family family;
};

/* A token named in tokenizer_config.json: "text" or {"content": "text"}. */
static const char *config_token(const cJSON *cfg, const char *name) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, name);
    if (cJSON_IsString(v)) return v->valuestring;
    if (cJSON_IsObject(v)) {
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
        if (cJSON_IsString(c)) return c->valuestring;
    }
    return NULL;
}

static int is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int compile_text(capmoe_jinja **out, const char *text, const char *name, capmoe_error *err) {
    return capmoe_jinja_compile(out, text, strlen(text), name, err);
}

static int compile_file(capmoe_jinja **out, const char *path, const char *name, capmoe_error *err) {
    size_t len;
    char *text = capmoe_read_file(path, &len, err);
    if (!text) return -1;
    int rc = capmoe_jinja_compile(out, text, len, name, err);
    free(text);
    return rc;
}

/* The special tokens transformers passes to the template (its
 * special_tokens_map), as JSON object members. */
static char *tokens_members(const cJSON *cfg) {
    static const char *const names[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                        "pad_token", "cls_token", "mask_token"};
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    for (size_t i = 0; cfg && i < sizeof names / sizeof names[0]; i++) {
        const char *t = config_token(cfg, names[i]);
        if (t) cJSON_AddStringToObject(o, names[i], t);
    }
    const cJSON *extra = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "additional_special_tokens") : NULL;
    if (cJSON_IsArray(extra) && cJSON_GetArraySize(extra) > 0) {
        cJSON *l = cJSON_AddArrayToObject(o, "additional_special_tokens");
        const cJSON *it;
        cJSON_ArrayForEach(it, extra) {
            const char *t = cJSON_IsString(it) ? it->valuestring
                          : cJSON_IsObject(it) && cJSON_IsString(cJSON_GetObjectItemCaseSensitive(it, "content"))
                              ? cJSON_GetObjectItemCaseSensitive(it, "content")->valuestring
                              : NULL;
            if (t) cJSON_AddItemToArray(l, cJSON_CreateString(t));
        }
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return NULL;
    size_t n = strlen(s); /* "{...}" -> "...," (or "" when empty) */
    if (n <= 2) {
        s[0] = '\0';
        return s;
    }
    memmove(s, s + 1, n - 2);
    s[n - 2] = ',';
    s[n - 1] = '\0';
    return s;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

static int set_source(capmoe_chat *c, const char *fmt, const char *a) {
    size_t n = strlen(fmt) + strlen(a) + 1;
    c->source = malloc(n);
    if (!c->source) return -1;
    snprintf(c->source, n, fmt, a);
    return 0;
}

static int load_override(capmoe_chat *c, const char *override, capmoe_error *err) {
    if (is_file(override)) {
        if (compile_file(&c->tmpl, override, override, err) != 0) return -1;
        return set_source(c, "%s (--chat-template)", override);
    }
    if ((c->native = capmoe__chat_builtin(override)) != NULL) {
        if (!strcmp(override, "chatml") || !strncmp(override, "qwen", 4)) c->family = CAPMOE_CHAT_CHATML;
        else if (!strcmp(override, "olmoe")) c->family = CAPMOE_CHAT_OLMOE;
        else c->family = CAPMOE_CHAT_MISTRAL;
        return set_source(c, "built-in family %s (--chat-template)", override);
    }
    return capmoe_set_error(err, "chat_template '%s' is neither a readable file nor a built-in family (%s)",
                            override, capmoe__chat_builtin_names());
}

static int load_model(capmoe_chat *c, const char *dir, const cJSON *cfg, capmoe_error *err) {
    char *jpath = capmoe_path_join(dir, "chat_template.jinja");
    if (!jpath) return capmoe_set_error(err, "out of memory");
    if (is_file(jpath)) {
        int rc = compile_file(&c->tmpl, jpath, "chat_template.jinja", err);
        if (rc == 0) rc = set_source(c, "%s", jpath);
        free(jpath);
        return rc;
    }
    free(jpath);
    const cJSON *ct = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "chat_template") : NULL;
    if (!ct || cJSON_IsNull(ct)) return set_source(c, "%s", "none");
    if (cJSON_IsString(ct)) {
        if (compile_text(&c->tmpl, ct->valuestring, "tokenizer_config.json chat_template", err) != 0) return -1;
    } else if (cJSON_IsArray(ct)) { /* [{"name": ..., "template": ...}, ...] */
        const cJSON *it;
        const char *dflt = NULL, *tool = NULL;
        cJSON_ArrayForEach(it, ct) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(it, "name");
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(it, "template");
            if (!cJSON_IsString(name) || !cJSON_IsString(t))
                return capmoe_set_error(err, "tokenizer_config.json: chat_template list items need a string "
                                        "\"name\" and \"template\"");
            if (!strcmp(name->valuestring, "default")) dflt = t->valuestring;
            if (!strcmp(name->valuestring, "tool_use")) tool = t->valuestring;
        }
        if (!dflt)
            return capmoe_set_error(err, "tokenizer_config.json: the chat_template list has no \"default\" "
                                    "template (transformers refuses it too); pass --chat-template");
        if (compile_text(&c->tmpl, dflt, "tokenizer_config.json chat_template 'default'", err) != 0) return -1;
        if (tool && compile_text(&c->tool_tmpl, tool, "tokenizer_config.json chat_template 'tool_use'", err) != 0)
            return -1;
    } else {
        return capmoe_set_error(err, "tokenizer_config.json: chat_template must be a string or a list of "
                                "{\"name\", \"template\"}");
    }
    char *cfgpath = capmoe_path_join(dir, "tokenizer_config.json");
    if (!cfgpath) return capmoe_set_error(err, "out of memory");
    int rc = set_source(c, "%s chat_template", cfgpath);
    free(cfgpath);
    if (cJSON_IsString(ct)) c->family = capmoe_chat_detect(ct->valuestring);
    return rc;
}

int capmoe_chat_load(capmoe_chat **out, const char *model_dir, const char *override, capmoe_error *err) {
    *out = NULL;
    capmoe_chat *c = calloc(1, sizeof *c);
    if (!c) return capmoe_set_error(err, "out of memory");
    cJSON *cfg = NULL;
    char *cfgpath = capmoe_path_join(model_dir ? model_dir : ".", "tokenizer_config.json");
    int rc = cfgpath ? 0 : capmoe_set_error(err, "out of memory");
    if (rc == 0 && is_file(cfgpath)) {
        size_t len;
        char *text = capmoe_read_file(cfgpath, &len, err);
        if (!text) rc = -1;
        else {
            cfg = cJSON_ParseWithLength(text, len);
            free(text);
            if (!cJSON_IsObject(cfg)) rc = capmoe_set_error(err, "%s: malformed JSON", cfgpath);
        }
    }
    if (rc == 0 && !(c->tokens_json = tokens_members(cfg))) rc = capmoe_set_error(err, "out of memory");
    if (rc == 0 && cfg) {
        c->bos = dup_or_null(config_token(cfg, "bos_token"));
        c->eos = dup_or_null(config_token(cfg, "eos_token"));
    }
    if (rc == 0) {
        if (override && *override) {
            rc = load_override(c, override, err);
        } else {
            rc = load_model(c, model_dir ? model_dir : ".", cfg, err);
            if (rc != 0) {
                char msg[CAPMOE_ERR_MSG];
                snprintf(msg, sizeof msg, "%s", err ? err->msg : "");
                capmoe_set_error(err, "the model's chat template cannot be used: %s (--chat-template FILE "
                                 "or a built-in family (%s) replaces it)", msg, capmoe__chat_builtin_names());
            }
        }
    }
    if (rc == 0 && !c->source) rc = capmoe_set_error(err, "out of memory");
    free(cfgpath);
    cJSON_Delete(cfg);
    if (rc != 0) {
        capmoe_chat_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

void capmoe_chat_free(capmoe_chat *c) {
    if (!c) return;
    capmoe_jinja_free(c->tmpl);
    capmoe_jinja_free(c->tool_tmpl);
    capmoe__chat_style_free(c->native);
    free(c->tokens_json);
    free(c->bos);
    free(c->eos);
    free(c->source);
    free(c);
}

const char *capmoe_chat_source(const capmoe_chat *c) { return c && c->source ? c->source : "none"; }
int capmoe_chat_has_template(const capmoe_chat *c) { return c && (c->tmpl || c->native); }
capmoe_chat_family capmoe_chat_get_family(const capmoe_chat *c) { return c ? c->family : CAPMOE_CHAT_NONE; }

/* ---- rendering ---------------------------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void put(sbuf *b, const char *s) {
    size_t n = strlen(s);
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n + 1);
    b->n += n;
}

/* The members of a JSON object text ("{...}" -> "..."), validated. */
static int object_members(const char *json, const char *what, sbuf *b, capmoe_error *err) {
    cJSON *o = cJSON_Parse(json);
    int ok = cJSON_IsObject(o);
    cJSON_Delete(o);
    if (!ok) return capmoe_set_error(err, "chat: %s must be a JSON object", what);
    const char *s = strchr(json, '{') + 1, *e = strrchr(json, '}');
    while (s < e && (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')) s++;
    if (s == e) return 0;
    size_t n = (size_t)(e - s);
    char *m = malloc(n + 2);
    if (!m) return capmoe_set_error(err, "out of memory");
    memcpy(m, s, n);
    m[n] = ',';
    m[n + 1] = '\0';
    put(b, m);
    free(m);
    return 0;
}

static int check_array(const char *json, const char *what, capmoe_error *err) {
    cJSON *a = cJSON_Parse(json);
    int ok = cJSON_IsArray(a);
    cJSON_Delete(a);
    return ok ? 0 : capmoe_set_error(err, "chat: %s must be a JSON array", what);
}

/* Role / content pairs of JSON messages, for the built-in families (content:
 * a string, or the text of a list of text parts). */
static int native_apply(const capmoe_chat *c, const char *messages_json, const char *tools_json,
                        int gen, char **prompt, capmoe_error *err) {
    if (tools_json) {
        cJSON *t = cJSON_Parse(tools_json);
        int n = cJSON_IsArray(t) ? cJSON_GetArraySize(t) : 1;
        cJSON_Delete(t);
        if (n > 0) return capmoe_set_error(err, "chat: the built-in template %s does not render tools", c->source);
    }
    cJSON *m = cJSON_Parse(messages_json);
    if (!cJSON_IsArray(m)) {
        cJSON_Delete(m);
        return capmoe_set_error(err, "chat: messages must be a JSON array");
    }
    int n = cJSON_GetArraySize(m), i = 0, rc = 0;
    capmoe_chat_msg *msgs = calloc((size_t)n + 1, sizeof *msgs);
    char **texts = calloc((size_t)n + 1, sizeof *texts);
    if (!msgs || !texts) rc = capmoe_set_error(err, "out of memory");
    const cJSON *it;
    cJSON_ArrayForEach(it, m) {
        if (rc) break;
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(it, "content");
        msgs[i].role = cJSON_IsString(role) ? role->valuestring : "";
        if (cJSON_IsString(content)) {
            msgs[i].content = content->valuestring;
        } else if (cJSON_IsArray(content)) {
            sbuf b = {0};
            const cJSON *part;
            put(&b, "");
            cJSON_ArrayForEach(part, content) {
                const cJSON *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
                if (cJSON_IsString(tx)) put(&b, tx->valuestring);
            }
            if (b.oom) rc = capmoe_set_error(err, "out of memory");
            msgs[i].content = texts[i] = b.p;
        } else {
            msgs[i].content = "";
        }
        i++;
    }
    if (!rc) rc = capmoe__chat_native_render(c->native, c->bos, c->eos, msgs, n, gen, prompt, err);
    for (int k = 0; texts && k < n; k++) free(texts[k]);
    free(texts);
    free(msgs);
    cJSON_Delete(m);
    return rc;
}

int capmoe_chat_apply(const capmoe_chat *c, const char *messages_json, const char *tools_json,
                      int add_generation_prompt, const char *extra_json, char **prompt,
                      capmoe_error *err) {
    *prompt = NULL;
    if (!c || (!c->tmpl && !c->native))
        return capmoe_set_error(err, "chat: the model has no chat template (no chat_template in "
                                "tokenizer_config.json, no chat_template.jinja); --chat-template FILE or a "
                                "built-in family (%s) provides one", capmoe__chat_builtin_names());
    if (!messages_json) return capmoe_set_error(err, "chat: no messages");
    if (c->native) return native_apply(c, messages_json, tools_json, add_generation_prompt, prompt, err);
    if (check_array(messages_json, "messages", err) != 0) return -1;
    if (tools_json && check_array(tools_json, "tools", err) != 0) return -1;
    sbuf b = {0};
    put(&b, "{");
    put(&b, c->tokens_json);
    put(&b, "\"documents\":null,");
    if (extra_json && object_members(extra_json, "the extra template variables", &b, err) != 0) {
        free(b.p);
        return -1;
    }
    put(&b, "\"messages\":");
    put(&b, messages_json);
    put(&b, ",\"tools\":");
    put(&b, tools_json ? tools_json : "null");
    put(&b, add_generation_prompt ? ",\"add_generation_prompt\":true}" : ",\"add_generation_prompt\":false}");
    if (b.oom) {
        free(b.p);
        return capmoe_set_error(err, "out of memory");
    }
    const capmoe_jinja *t = tools_json && c->tool_tmpl ? c->tool_tmpl : c->tmpl;
    int rc = capmoe_jinja_render(t, b.p, NULL, prompt, NULL, err);
    free(b.p);
    return rc;
}

static char *msgs_json(const capmoe_chat_msg *msgs, int n) {
    cJSON *a = cJSON_CreateArray();
    for (int i = 0; a && i < n; i++) {
        cJSON *m = cJSON_CreateObject();
        if (!m) break;
        cJSON_AddStringToObject(m, "role", msgs[i].role ? msgs[i].role : "");
        cJSON_AddStringToObject(m, "content", msgs[i].content ? msgs[i].content : "");
        cJSON_AddItemToArray(a, m);
    }
    char *s = a ? cJSON_PrintUnformatted(a) : NULL;
    cJSON_Delete(a);
    return s;
}

int capmoe_chat_apply_msgs(const capmoe_chat *c, const capmoe_chat_msg *msgs, int n_msgs,
                           int add_generation_prompt, char **prompt, capmoe_error *err) {
    *prompt = NULL;
    if (n_msgs <= 0 || !msgs) return capmoe_set_error(err, "chat: no messages");
    char *j = msgs_json(msgs, n_msgs);
    if (!j) return capmoe_set_error(err, "out of memory");
    int rc = capmoe_chat_apply(c, j, NULL, add_generation_prompt, NULL, prompt, err);
    free(j);
    return rc;
}

int capmoe_chat_render_template(const char *template_str, const char *bos, const char *eos,
                                const capmoe_chat_msg *msgs, int n_msgs, int add_generation_prompt,
                                char **prompt, int *add_special, capmoe_error *err) {
    *prompt = NULL;
    if (add_special) *add_special = 0; /* the templates write their special tokens themselves */
    if (!template_str) return capmoe_set_error(err, "chat: no chat_template");
    if (n_msgs <= 0 || !msgs) return capmoe_set_error(err, "chat: no messages");
    capmoe_chat c;
    char source[] = "chat template";
    memset(&c, 0, sizeof c);
    if (compile_text(&c.tmpl, template_str, "chat template", err) != 0) return -1;
    cJSON *tok = cJSON_CreateObject();
    if (tok && bos) cJSON_AddStringToObject(tok, "bos_token", bos);
    if (tok && eos) cJSON_AddStringToObject(tok, "eos_token", eos);
    char *members = tok ? cJSON_PrintUnformatted(tok) : NULL;
    cJSON_Delete(tok);
    int rc = -1;
    if (members) {
        size_t n = strlen(members);
        memmove(members, members + 1, n - 1); /* "{...}" -> "...," */
        if (n > 2) {
            members[n - 2] = ',';
            members[n - 1] = '\0';
        } else {
            members[0] = '\0';
        }
        c.tokens_json = members;
        c.source = source;
        rc = capmoe_chat_apply_msgs(&c, msgs, n_msgs, add_generation_prompt, prompt, err);
    } else {
        capmoe_set_error(err, "out of memory");
    }
    free(members);
    capmoe_jinja_free(c.tmpl);
    return rc;
}
