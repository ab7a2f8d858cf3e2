/* chat.h - chat templates: a conversation -> the prompt text, as Hugging Face
 * transformers' apply_chat_template(tokenize=False) writes it.
 *
 * Which template (capmoe_chat_load), as transformers finds it:
 *   1. the override (--chat-template): a Jinja file, or the name of a
 *      built-in family (chatml, qwen2.5, qwen3, mistral, llama2, olmoe:
 *      rendered by C code written from those families' templates)
 *   2. MODEL/chat_template.jinja
 *   3. MODEL/tokenizer_config.json "chat_template": a string, or a list of
 *      {"name", "template"}: "default", and "tool_use" when tools are given
 * A Jinja template is compiled once at load by core/jinja.c (Jinja2's
 * semantics in transformers' environment) and rendered per request with the
 * variables transformers passes: messages, tools (None when absent),
 * documents, add_generation_prompt, the special tokens of
 * tokenizer_config.json (bos_token, eos_token, unk_token, pad_token, ...)
 * and extra keyword arguments. A template that cannot be compiled fails the
 * load with the construct and its position; the override is the only way
 * around it (never a silently different prompt).
 *
 * Thread safety: a loaded capmoe_chat is immutable; any thread may render. */
#ifndef CAPMOE_CHAT_H
#define CAPMOE_CHAT_H

#include "capmoe/common.h"

typedef enum capmoe_chat_family {
    CAPMOE_CHAT_NONE = 0,
    CAPMOE_CHAT_CHATML,   /* <|im_start|>role\ncontent<|im_end|>\n (Qwen, default model) */
    CAPMOE_CHAT_MISTRAL,  /* <s>[INST] ... [/INST] ...</s> (Mistral / Mixtral / Llama-2 style) */
    CAPMOE_CHAT_OLMOE,    /* <|endoftext|><|user|>\n ... <|assistant|>\n (OLMoE / Tulu) */
    CAPMOE_CHAT_DEEPSEEK_V2, /* <｜begin▁of▁sentence｜>User: ...\n\nAssistant: ... */
    CAPMOE_CHAT_DEEPSEEK_V3  /* <｜begin▁of▁sentence｜><｜User｜>...<｜Assistant｜>... */
} capmoe_chat_family;

typedef struct capmoe_chat_msg {
    const char *role;     /* "system", "user", "assistant", "tool" */
    const char *content;
} capmoe_chat_msg;

typedef struct capmoe_chat capmoe_chat;

/* Loads the chat template of the model directory model_dir (see above).
 * override: NULL or "" (none), a path to a Jinja file, or a built-in family
 * name. A model without any template loads fine: rendering then fails with
 * a message saying so. *out: caller owns; free with capmoe_chat_free. */
int capmoe_chat_load(capmoe_chat **out, const char *model_dir, const char *override, capmoe_error *err);
void capmoe_chat_free(capmoe_chat *c);

/* Where the template comes from, for logs: "DIR/tokenizer_config.json
 * chat_template", "FILE (--chat-template)", "built-in family chatml", or
 * "none". Owned by c. */
const char *capmoe_chat_source(const capmoe_chat *c);
/* 1 when there is a template to render with. */
int capmoe_chat_has_template(const capmoe_chat *c);
/* The family of the template in use (for stop tokens and tool-call parsing);
 * CAPMOE_CHAT_NONE when it is none of the built-in ones. */
capmoe_chat_family capmoe_chat_get_family(const capmoe_chat *c);

/* Renders a conversation. messages_json: a JSON array of message objects
 * (role, content as a string or a list of parts, tool_calls, tool_call_id,
 * name, reasoning_content, ...: passed to the template as they are);
 * tools_json: a JSON array of tool schemas, or NULL (tools = None);
 * extra_json: NULL or a JSON object of extra template variables
 * (enable_thinking, documents, ...). JSON numbers keep Python's int/float
 * distinction. *prompt: malloc'd, NUL-terminated (caller frees). The prompt
 * holds the template's special tokens as text: encode it without adding
 * special tokens (transformers' add_special_tokens=False). */
int capmoe_chat_apply(const capmoe_chat *c, const char *messages_json, const char *tools_json,
                      int add_generation_prompt, const char *extra_json, char **prompt,
                      capmoe_error *err);

/* capmoe_chat_apply for plain role / content messages. */
int capmoe_chat_apply_msgs(const capmoe_chat *c, const capmoe_chat_msg *msgs, int n_msgs,
                           int add_generation_prompt, char **prompt, capmoe_error *err);

/* Family of a template string (NONE when unrecognised or NULL). */
capmoe_chat_family capmoe_chat_detect(const char *template_str);

/* Renders role / content messages with an explicit Jinja template string
 * and bos / eos token texts (NULL: undefined, renders as ""). *prompt is
 * malloc'd (caller frees); *add_special (optional) is set to 0: templates
 * write their special tokens themselves. */
int capmoe_chat_render_template(const char *template_str, const char *bos, const char *eos,
                                const capmoe_chat_msg *msgs, int n_msgs, int add_generation_prompt,
                                char **prompt, int *add_special, capmoe_error *err);

#endif
