/* api_json.h - typed readers of request JSON fields: each checks type and
 * range and fills an OpenAI-shaped 400 naming the field on failure. */
#ifndef CAPMOE_API_JSON_H
#define CAPMOE_API_JSON_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "capmoe/api_error.h"
#include "capmoe/api_request.h"

#define E400(e, param, ...) \
    capmoe_api_fail(e, 400, "invalid_request_error", NULL, param, __VA_ARGS__)

/* cJSON over a length-delimited buffer, refusing trailing non-space bytes
 * and strings that hold an escaped NUL. NULL (e filled) on error. */
cJSON *capmoe_api_json_parse(const char *body, size_t len, capmoe_api_error *e);
/* The field, or NULL when absent or JSON null. */
const cJSON *capmoe_api_field(const cJSON *o, const char *name);
int capmoe_api_is_integer(const cJSON *f);
/* Optional integer in [lo, hi]; *out unchanged when absent. */
int capmoe_api_get_int(const cJSON *o, const char *name, double lo, double hi, int *out,
                       capmoe_api_error *e);
/* Optional number in [lo, hi] (lo_open: lo excluded). */
int capmoe_api_get_num(const cJSON *o, const char *name, double lo, int lo_open, double hi,
                       float *out, capmoe_api_error *e);
int capmoe_api_get_bool(const cJSON *o, const char *name, int *out, capmoe_api_error *e);
/* Optional string, strdup'd into *out (freeing what was there). */
int capmoe_api_get_str(const cJSON *o, const char *name, char **out, capmoe_api_error *e);
/* A non-empty array of token ids (checked against lim->vocab), malloc'd. */
int capmoe_api_parse_ids(const cJSON *arr, const char *param, const capmoe_api_limits *lim,
                         int32_t **ids, int *n_ids, capmoe_api_error *e);

/* api_request.c: root's "messages" (required, a non-empty list of
 * {role, content}) into r->messages / r->n_messages. */
int capmoe_api_parse_messages(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e);

/* api_tools.c: checks the tool parts of message idx (role "tool":
 * tool_call_id; assistant: tool_calls) and adds them to out, the message
 * as the template gets it. */
int capmoe_api_tool_message(const cJSON *it, int idx, const char *role, cJSON *out,
                            capmoe_api_error *e);
/* api_tools.c: tools, tool_choice, parallel_tool_calls into r (after
 * response_format: a required / named choice sets r->grammar). */
int capmoe_api_parse_tools(const cJSON *root, capmoe_api_request *r, capmoe_api_error *e);
/* api_tools.c: r's tool calls are written in form (the template's; parse_tools
 * assumed Hermes): recompiles the grammar of a required / named choice for it
 * and sets r->tool_prefill; a 400 on tool_choice when form is unknown and the
 * choice needs the grammar. */
int capmoe_api_tools_set_form(capmoe_api_request *r, capmoe_api_tool_form form,
                              capmoe_api_error *e);
/* api_toolcalls.c: the form a probe rendering shows (a conversation whose
 * assistant message calls "probe_fn" with {} through the template). */
capmoe_api_tool_form capmoe_api_tool_form_of(const char *rendered);
const char *capmoe_api_tool_form_name(capmoe_api_tool_form f);
/* api_toolcalls.c: the tool calls in generated text, read in r->tool_form
 * (after r->tool_prefill when set), as OpenAI's message.tool_calls (ids
 * call_<id_base>_<k>; for Mistral 9 letters and digits derived from id_base
 * and k), or NULL when there are none; *content: the text around them
 * (malloc'd, NULL when empty). */
cJSON *capmoe_api_tool_calls(const capmoe_api_request *r, const char *text, const char *id_base,
                             char **content);

#endif
