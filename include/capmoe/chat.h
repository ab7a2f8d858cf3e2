/* chat.h - chat templates (tokenizer_config.json "chat_template") rendered in C.
 * The Jinja template is recognised by family (ChatML, Mistral [INST], ...)
 * and rendered natively. */
#ifndef CAPMOE_CHAT_H
#define CAPMOE_CHAT_H

#include "capmoe/common.h"
#include "capmoe/tokenizer.h"

typedef enum capmoe_chat_family {
    CAPMOE_CHAT_NONE = 0,
    CAPMOE_CHAT_CHATML,   /* <|im_start|>role\ncontent<|im_end|>\n (Qwen, default model) */
    CAPMOE_CHAT_MISTRAL,  /* <s>[INST] ... [/INST] ...</s> (Mistral / Mixtral / Llama-2 style) */
    CAPMOE_CHAT_OLMOE,    /* <|endoftext|><|user|>\n ... <|assistant|>\n (OLMoE / Tulu) */
    CAPMOE_CHAT_DEEPSEEK_V2, /* <｜begin▁of▁sentence｜>User: ...\n\nAssistant: ... */
    CAPMOE_CHAT_DEEPSEEK_V3  /* <｜begin▁of▁sentence｜><｜User｜>...<｜Assistant｜>... */
} capmoe_chat_family;

typedef struct capmoe_chat_msg {
    const char *role;     /* "system", "user", "assistant" */
    const char *content;
} capmoe_chat_msg;

/* Family of a template string (NONE when unrecognised or NULL). */
capmoe_chat_family capmoe_chat_detect(const char *template_str);

/* Renders messages into a malloc'd prompt string (special tokens written as
 * text; encode it with add_special = 0 unless the family needs the BOS added
 * by the post-processor, which *add_special reports). */
int capmoe_chat_render(const capmoe_tokenizer *tok, const capmoe_chat_msg *msgs, int n_msgs,
                       int add_generation_prompt, char **prompt, int *add_special,
                       capmoe_error *err);

/* As capmoe_chat_render with an explicit template string and bos/eos token
 * texts (NULL renders as ""), e.g. for a template given in a config file.
 * Unrecognised templates fail with a message quoting the template's start;
 * conversations the Jinja template would reject (roles that do not
 * alternate, an unsupported role) fail with the template's reason.
 * *prompt is malloc'd (caller frees). Added by the tokenizer engineer. */
int capmoe_chat_render_template(const char *template_str, const char *bos, const char *eos,
                                const capmoe_chat_msg *msgs, int n_msgs, int add_generation_prompt,
                                char **prompt, int *add_special, capmoe_error *err);

#endif
