/* jinja.h - a Jinja interpreter for chat templates, rendering as Hugging Face
 * transformers renders them.
 *
 * transformers compiles a model's chat_template with Jinja2 in an
 * ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
 * extensions=[loopcontrols, its {% generation %} tag]), replaces the tojson
 * filter by json.dumps(x, ensure_ascii=False, indent=None, separators=None,
 * sort_keys=False), adds the globals raise_exception(message) and
 * strftime_now(format), and renders with the variables messages, tools,
 * documents, add_generation_prompt, the tokenizer's special tokens
 * (bos_token, eos_token, ...) and any extra keyword arguments. This module
 * does the same in C, for the subset of Jinja that chat templates use:
 *
 *   statements  if/elif/else, for (tuple targets, `if` filter, else, loop.*,
 *               break/continue), set (names, tuples, namespace attributes,
 *               block set with filters), macro + call blocks (caller,
 *               varargs, kwargs), filter blocks, with, raw, generation
 *   expressions literals (str, int, float, list, tuple, dict, true/false/
 *               none), + - * / // % ** ~, comparisons (chained), in / not
 *               in, and / or / not, is [not] tests, `x if c else y`,
 *               attributes, subscripts, slices, calls with keywords
 *   values      Python semantics: str() and repr() of every type (float
 *               repr, quoting), truthiness, equality across int/float/bool,
 *               Undefined that renders "" and fails when used, generators
 *               (map/select/... results: truthy, no length, consumed once)
 *   globals     range, dict, namespace, cycler, joiner, raise_exception,
 *               strftime_now
 *   filters     abs attr batch capitalize center count d default dictsort e
 *               escape first float format groupby indent int items join
 *               last length list lower map max min reject rejectattr replace
 *               reverse round safe select selectattr slice sort string sum
 *               title tojson trim truncate unique upper wordcount
 *   tests       boolean callable defined divisibleby eq equalto escaped even
 *               false filter float ge gt greaterthan in integer iterable le
 *               lower lt lessthan mapping ne none number odd sameas sequence
 *               string test true undefined upper == != < <= > >=
 *   methods     of str (strip split startswith format join replace ... ),
 *               dict (items keys values get) and list (index count); the
 *               sandbox refuses methods that mutate (append, update, pop...)
 *
 * Refused when the template is compiled, with an error naming the construct
 * and its line and column: extends/include/import/block and other tags that
 * need a loader, unknown filters and tests, recursive loops, syntax errors.
 * Everything else that Jinja2 raises while rendering (undefined attributes
 * of undefined values, type errors, raise_exception) fails the render with
 * the construct and position.
 *
 * Limits (capmoe_jinja_limits) bound one render: output bytes, scratch
 * memory, loop iterations + calls, nesting of macro calls.
 *
 * Integers are 64-bit (an overflow is an error, where Python would grow).
 * Case mappings are Unicode's (utf8proc) plus Python's one-to-many special
 * cases ('ß'.upper() == 'SS', ligatures, 'İ'.lower(), final sigma).
 * Printing what Python prints with a memory address (a generator, a bound
 * method) is an error.
 *
 * Thread safety: a compiled template is immutable; any number of threads may
 * render it at once. */
#ifndef CAPMOE_JINJA_H
#define CAPMOE_JINJA_H

#include <stddef.h>

#include "capmoe/common.h"

typedef struct capmoe_jinja capmoe_jinja;

typedef struct capmoe_jinja_limits {
    size_t max_output;   /* bytes of rendered text (0: 16 MiB) */
    size_t max_memory;   /* scratch bytes of one render (0: 512 MiB) */
    long max_steps;      /* loop iterations + calls + filter applications (0: 10,000,000) */
    int max_depth;       /* nested macro calls (0: 100) */
} capmoe_jinja_limits;

/* Compiles a template (UTF-8, len bytes). name appears in error messages
 * (e.g. "tokenizer_config.json chat_template"). *out: caller owns; free
 * with capmoe_jinja_free. */
int capmoe_jinja_compile(capmoe_jinja **out, const char *source, size_t len, const char *name,
                         capmoe_error *err);
void capmoe_jinja_free(capmoe_jinja *t);

/* 1 when the template mentions the variable `name` anywhere (e.g. "tools"). */
int capmoe_jinja_uses(const capmoe_jinja *t, const char *name);

typedef struct capmoe_jinja_opts {
    const capmoe_jinja_limits *limits; /* NULL: the defaults */
    long long now;                     /* seconds since the epoch for strftime_now
                                          (local time); 0: the current time */
} capmoe_jinja_opts;

/* Renders the template. vars_json: a JSON object (text) whose members are
 * the template variables (messages, tools, add_generation_prompt, bos_token,
 * ...); NULL or "" means none. JSON numbers keep Python's distinction:
 * 1 is an int, 1.0 and 1e3 are floats (as json.loads reads them). opts may
 * be NULL. *out: malloc'd, NUL-terminated (caller frees); *len optional. */
int capmoe_jinja_render(const capmoe_jinja *t, const char *vars_json,
                        const capmoe_jinja_opts *opts, char **out, size_t *len,
                        capmoe_error *err);

#endif
