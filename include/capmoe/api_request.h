/* api_request.h - the bodies of /v1/completions and /v1/chat/completions,
 * parsed and validated into native structs (no JSON past this point). */
#ifndef CAPMOE_API_REQUEST_H
#define CAPMOE_API_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "capmoe/api_error.h"
#include "capmoe/chat.h"
#include "capmoe/grammar.h"
#include "capmoe/logitproc.h"
#include "capmoe/sample.h"
#include "capmoe/sched.h"

/* Limits the parser checks against; 0 = unknown (that check is skipped). */
typedef struct capmoe_api_limits {
    int context;     /* max_tokens <= context */
    int vocab;       /* token ids in [0, vocab) */
    int max_n;       /* n <= max_n (16 by default) */
} capmoe_api_limits;

typedef struct capmoe_api_prompt {
    char *text;      /* a text prompt (malloc'd, NUL-terminated), or NULL */
    size_t text_len;
    int32_t *ids;    /* a token-id prompt (malloc'd), or NULL */
    int n_ids;
} capmoe_api_prompt;

typedef enum capmoe_api_tool_choice {
    CAPMOE_TOOLS_AUTO = 0,         /* the model decides (the default with tools) */
    CAPMOE_TOOLS_NONE,             /* no tool calls: the tools are not shown to the model */
    CAPMOE_TOOLS_REQUIRED,         /* at least one call (constrained decoding) */
    CAPMOE_TOOLS_NAMED             /* one call of tool_name (constrained decoding) */
} capmoe_api_tool_choice;

/* How the model's chat template writes tool calls (probed by rendering a
 * conversation with a call; api_tools.c). */
typedef enum capmoe_api_tool_form {
    CAPMOE_TOOL_FORM_HERMES = 0,   /* <tool_call>\n{"name", "arguments"}\n</tool_call> (Hermes, Qwen) */
    CAPMOE_TOOL_FORM_MISTRAL,      /* [TOOL_CALLS] [{"name", "arguments"}, ...] (Mistral v0.3) */
    CAPMOE_TOOL_FORM_LLAMA3,       /* [<|python_tag|>]{"name", "parameters"} (Llama 3.1 / 3.2) */
    CAPMOE_TOOL_FORM_DEEPSEEK,     /* <｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>
                                      name\n```json\n{...}\n```<｜tool▁call▁end｜>... (DeepSeek-V3) */
    CAPMOE_TOOL_FORM_UNKNOWN       /* none of these: <tool_call> text is still read back */
} capmoe_api_tool_form;

typedef enum capmoe_api_kind {
    CAPMOE_API_COMPLETIONS = 0,
    CAPMOE_API_CHAT
} capmoe_api_kind;

#define CAPMOE_API_MAX_STOP 4
#define CAPMOE_API_MAX_PROMPTS 64

typedef struct capmoe_api_request {
    capmoe_api_kind kind;
    char *model;                   /* NULL when omitted */
    capmoe_api_prompt *prompts;    /* completions: 1..CAPMOE_API_MAX_PROMPTS */
    int n_prompts;
    capmoe_chat_msg *messages;     /* chat: role / content malloc'd */
    int n_messages;
    int max_tokens;                /* -1 when not given */
    capmoe_sampling sampling;
    int has_seed;
    uint64_t seed;
    char *stop[CAPMOE_API_MAX_STOP];
    int n_stop;
    int32_t stop_ids[CAPMOE_SCHED_MAX_STOP_IDS]; /* extension: stop_token_ids */
    int n_stop_ids;
    int n;
    int logprobs;                  /* -1: none; else top alternatives (completions 0..5,
                                      chat top_logprobs 0..20 with logprobs true) */
    int echo;                      /* completions */
    int stream;
    int include_usage;             /* stream_options.include_usage */
    int ignore_eos;                /* extension (vLLM) */
    int skip_special;              /* extension skip_special_tokens, default 1 */
    int add_special;               /* extension add_special_tokens (completions), default 1 */
    char *user;
    capmoe_penalties penalties;    /* presence_penalty, frequency_penalty, repetition_penalty */
    capmoe_logit_bias *logit_bias; /* logit_bias (malloc'd), ids checked against lim->vocab */
    int n_logit_bias;
    capmoe_grammar *grammar;       /* response_format json_object / json_schema, or the
                                      required / named tool call (owned) */
    /* function calling (api_tools.c) */
    char *messages_json;           /* the messages for the template when they hold tool
                                      calls / results (malloc'd), else NULL */
    char *tools_json;              /* tools as sent (malloc'd), NULL: none */
    int n_tools;
    capmoe_api_tool_choice tool_choice;
    char *tool_name;               /* tool_choice naming a function (malloc'd) */
    int parallel_tool_calls;       /* default 1 */
    capmoe_api_tool_form tool_form; /* the template's form (default Hermes), set before
                                      generation by capmoe_api_tools_set_form */
    const char *tool_prefill;      /* static: the form's opening marker appended to the
                                      prompt of a required / named call (its text is read
                                      back as if generated), or NULL */
} capmoe_api_request;

/* Parse + validate a body of /v1/completions or /v1/chat/completions.
 * Checks UTF-8 (whole body), JSON syntax (cJSON's nesting limit refuses deep
 * documents), types, ranges and the limits given (lim may be NULL). Unknown
 * fields are ignored. On error returns -1 with e filled (400, param set). */
int capmoe_api_parse_request(capmoe_api_kind kind, const char *body, size_t len,
                             const capmoe_api_limits *lim, capmoe_api_request *out,
                             capmoe_api_error *e);
void capmoe_api_request_free(capmoe_api_request *r);

#endif
