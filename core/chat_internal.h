/* chat_internal.h - the built-in chat template families (core/chat_native.c),
 * used by core/chat.c for `--chat-template NAME`. */
#ifndef CAPMOE_CHAT_INTERNAL_H
#define CAPMOE_CHAT_INTERNAL_H

#include "capmoe/chat.h"

typedef struct capmoe__chat_style capmoe__chat_style;

/* The family called name, or NULL when there is none (or out of memory).
 * Caller owns; free with capmoe__chat_style_free. */
capmoe__chat_style *capmoe__chat_builtin(const char *name);
void capmoe__chat_style_free(capmoe__chat_style *s);
/* "chatml, qwen2.5, ..." for messages. */
const char *capmoe__chat_builtin_names(void);

/* Renders role/content messages; *prompt malloc'd (caller frees). Fails
 * where the family's Jinja template raises (roles that do not alternate,
 * an unsupported role). */
int capmoe__chat_native_render(const capmoe__chat_style *s, const char *bos, const char *eos,
                               const capmoe_chat_msg *msgs, int n_msgs, int add_generation_prompt,
                               char **prompt, capmoe_error *err);

#endif
