/* jinja_internal.h - shared internals of the Jinja interpreter (core/jinja*.c).
 *
 *   jinja_lex.c     template text -> tokens (whitespace control as Jinja2's
 *                   lexer with trim_blocks + lstrip_blocks)
 *   jinja_parse.c   tokens -> syntax tree (Jinja2's grammar and precedence)
 *   jinja_value.c   values: arena, strings, lists, dicts, str()/repr(),
 *                   equality and ordering, JSON in (json.loads) and out
 *                   (json.dumps)
 *   jinja_eval.c    the evaluator: statements, expressions, scopes, macros
 *   jinja_filters.c filters and tests
 *   jinja_methods.c methods of str / dict / list, loop, cycler
 *   jinja_format.c  str.format and % formatting
 *   jinja.c         the public API (capmoe_jinja_*)
 *
 * Memory: a compiled template owns one arena (tokens' text, the tree, interned
 * names). A render allocates every value in its own arena, freed at the end;
 * values are never freed one by one (they are immutable, except namespaces,
 * loops, cyclers and joiners, which templates mutate through their methods).
 * Errors during parsing and rendering longjmp to the entry point with the
 * message already written (nothing else to unwind: all memory is in arenas). */
#ifndef CAPMOE_JINJA_INTERNAL_H
#define CAPMOE_JINJA_INTERNAL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "capmoe/common.h"
#include "capmoe/jinja.h"

/* ---- arena --------------------------------------------------------------------- */

typedef struct jj_chunk jj_chunk;
typedef struct jj_arena {
    jj_chunk *head;
    size_t total;  /* bytes taken from malloc */
    size_t limit;  /* 0 = none */
} jj_arena;

void *jj_arena_alloc(jj_arena *a, size_t n); /* zeroed; NULL when over the limit or out of memory */
void jj_arena_free(jj_arena *a);

/* ---- values ---------------------------------------------------------------------- */

typedef enum jj_type {
    JT_UNDEF = 0,
    JT_NONE,
    JT_BOOL,
    JT_INT,
    JT_FLOAT,
    JT_STR,
    JT_LIST,
    JT_TUPLE,
    JT_DICT,
    JT_GEN,     /* a one-shot iterator (map/select/... results) */
    JT_NS,      /* namespace(): mutable attributes */
    JT_MACRO,
    JT_FUNC,    /* a global function (range, dict, ...) */
    JT_METHOD,  /* a bound method of a value (str.strip, dict.items, loop.cycle, ...) */
    JT_LOOP,
    JT_CYCLER,
    JT_JOINER
} jj_type;

typedef struct jj_str {
    size_t n;        /* bytes */
    long ncp;        /* code points, -1 = not counted yet */
    char p[];        /* NUL-terminated UTF-8 */
} jj_str;

typedef struct jj_val jj_val;
typedef struct jj_list jj_list;
typedef struct jj_dict jj_dict;

struct jj_val {
    uint8_t t;       /* jj_type */
    uint8_t markup;  /* JT_STR: a Markup string (|safe, |escape) */
    union {
        int64_t i;   /* JT_INT, JT_BOOL, JT_FUNC (id) */
        double f;
        jj_str *s;
        jj_list *l;  /* JT_LIST, JT_TUPLE */
        jj_dict *d;  /* JT_DICT, JT_NS */
        struct jj_undef *u;
        struct jj_gen *g;
        struct jj_macro *m;
        struct jj_method *me;
        struct jj_loop *lp;
        struct jj_cycler *cy;
        struct jj_joiner *jo;
    } u;
};

struct jj_list {
    size_t n, cap;
    jj_val *v;
};

struct jj_dict {
    size_t n, cap;
    jj_val *k, *v;
    uint32_t *idx;   /* open-addressing hash of entry index + 1 (NULL while small) */
    size_t idx_cap;
};

typedef struct jj_undef {
    const char *msg; /* what using it says (e.g. "'dict object' has no attribute 'x'", or
                        for an unsafe attribute "access to attribute 'append' of 'list' object
                        is unsafe.") */
} jj_undef;

/* A one-shot iterator. Either its items are all in l (from pos on), or it
 * is lazy (op != 0): map / select / reject / selectattr / rejectattr of a
 * source, evaluated item by item as it is consumed, as Jinja2's generators
 * are (an error in an item nobody reads never happens). */
typedef struct jj_gen {
    jj_list *l;      /* the items */
    size_t pos;      /* next item */
    const char *kind; /* "generator", "list_reverseiterator" */
    int op;          /* 0, or GEN_MAP / GEN_SELECT (jinja_filters.c) */
    int started, done;
    jj_val src;      /* the source (a generator is read lazily too) */
    jj_list *src_items;
    size_t src_pos;
    struct jj_args *args;
    const struct jj_node *at;
    int reject, by_attr, fid;
    jj_val attribute, dflt;
} jj_gen;


typedef struct jj_node jj_node;
typedef struct jj_scope jj_scope;

typedef struct jj_macro {
    const jj_node *def;   /* N_MACRO or N_CALLBLOCK (the caller) */
    jj_scope *closure;
} jj_macro;

typedef struct jj_method {
    jj_val self;
    int id;               /* JM_* */
    const char *name;
} jj_method;

typedef struct jj_loop {
    jj_val *items;
    size_t n, i;
    int depth;
    int has_last;         /* loop.changed() state */
    jj_val last;
} jj_loop;

typedef struct jj_cycler {
    jj_list *items;
    size_t pos;
} jj_cycler;

typedef struct jj_joiner {
    jj_str *sep;
    int used;
} jj_joiner;

/* ---- syntax tree ------------------------------------------------------------------ */

typedef enum jj_kind {
    /* expressions */
    N_CONST = 1, N_NAME, N_GETATTR, N_GETITEM, N_SLICE, N_CALL, N_FILTER, N_TEST, N_BINOP,
    N_UNARY, N_AND, N_OR, N_COMPARE, N_COND, N_LIST, N_TUPLE, N_DICT, N_NSREF,
    /* statements */
    N_BLOCK, N_DATA, N_OUTPUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_MACRO, N_CALLBLOCK,
    N_FILTERBLOCK, N_WITH, N_BREAK, N_CONTINUE, N_GENERATION
} jj_kind;

typedef enum jj_op {
    OP_ADD = 1, OP_SUB, OP_MUL, OP_DIV, OP_FLOORDIV, OP_MOD, OP_POW, OP_CONCAT,
    OP_NEG, OP_POS, OP_NOT,
    OP_EQ, OP_NE, OP_LT, OP_LE, OP_GT, OP_GE, OP_IN, OP_NOTIN
} jj_op;

#define JJ_NEGATED 1     /* N_TEST: is not */
#define JJ_VARARGS 2     /* N_MACRO/N_CALLBLOCK body reads varargs */
#define JJ_KWARGS 4      /* ... reads kwargs */
#define JJ_CALLER 8      /* ... reads caller */

struct jj_node {
    uint8_t kind;        /* jj_kind */
    uint8_t op;          /* jj_op (N_BINOP, N_UNARY) */
    uint16_t flags;
    int fid;             /* N_FILTER / N_TEST: index of the filter / test */
    int line, col;
    const char *name;    /* interned: N_NAME, N_GETATTR attribute, N_FILTER/N_TEST name,
                            N_MACRO name, N_NSREF variable */
    const char *attr;    /* N_NSREF attribute */
    jj_val cval;         /* N_CONST, N_DATA */
    jj_node *a, *b, *c, *d;
    jj_node **items;     /* arguments, elements, body statements, parameters */
    int n_items;
    jj_node **vals;      /* N_DICT values, defaults of parameters (NULL entries: none),
                            N_WITH values, keyword argument values */
    const char **kw;     /* keyword argument names (aligned with vals) */
    int n_kw;
    uint8_t *ops;        /* N_COMPARE: operator of each operand in items */
};

/* ---- tokens -------------------------------------------------------------------------- */

typedef enum jj_tok_type {
    T_EOF = 0, T_DATA, T_BLOCK_BEGIN, T_BLOCK_END, T_VAR_BEGIN, T_VAR_END,
    T_NAME, T_STRING, T_INT, T_FLOAT, T_OP
} jj_tok_type;

typedef struct jj_tok {
    uint8_t type;
    char op[4];          /* T_OP: the operator text */
    int line, col;
    const char *s;       /* T_DATA, T_STRING (unescaped), T_NAME (interned) */
    size_t n;
    int64_t i;
    double f;
} jj_tok;

/* ---- compiled template ------------------------------------------------------------------ */

struct capmoe_jinja {
    jj_arena arena;
    jj_node *root;       /* N_BLOCK */
    const char **names;  /* interned names (hash set) */
    size_t names_cap, n_names;
    char name[96];       /* for messages */
};

/* Error context shared by the lexer and the parser. */
typedef struct jj_parse {
    capmoe_jinja *t;
    capmoe_error *err;
    jmp_buf jb;
    jj_tok *toks;
    size_t n_toks, cap_toks, pos;
    int depth;
    int loops;           /* for loops around the statement being parsed (break/continue) */
    int soft;            /* inside an if statement or an inline if (Jinja2's "soft frame"):
                            an unknown filter or test fails only if it runs */
    const jj_tok *unknown; /* an unknown filter / test met while parsing a maybe-inline-if
                              expression, refused if no "if" follows */
} jj_parse;

_Noreturn void jj_parse_fail(jj_parse *p, int line, int col, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
void *jj_parse_alloc(jj_parse *p, size_t n);
const char *jj_intern(jj_parse *p, const char *s, size_t n);
const char *jj_lookup_name(const capmoe_jinja *t, const char *s); /* NULL if never interned */

/* Tokenizes the source into p->toks (ends with T_EOF). */
void jj_lex(jj_parse *p, const char *src, size_t len);
/* Parses p->toks into p->t->root. */
void jj_parse_template(jj_parse *p);

/* ---- runtime ------------------------------------------------------------------------------ */

typedef struct jj_buf {
    char *p;
    size_t n, cap;
} jj_buf;

struct jj_scope {
    jj_scope *parent;
    size_t n, cap;
    const char **names;  /* interned */
    jj_val *vals;
};

typedef struct jj_rt {
    const capmoe_jinja *t;
    capmoe_error *err;
    jmp_buf jb;
    jj_arena arena;
    jj_dict *vars;       /* the render variables */
    jj_buf *out;         /* where output goes (the result or a capture) */
    size_t max_output;
    long steps_left;
    int depth, max_depth;
    long long now;
    int loop_ctl;        /* 0, N_BREAK, N_CONTINUE while unwinding to the loop */
    int loop_depth;      /* for loops entered (break/continue need one) */
    jj_val filter_in;    /* the input of a filter block / block set chain */
    const jj_node *at;   /* the construct being evaluated (for error positions) */
} jj_rt;

_Noreturn void jj_fail(jj_rt *rt, const jj_node *at, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void *jj_alloc(jj_rt *rt, size_t n);
void jj_step(jj_rt *rt, const jj_node *at); /* counts one step against the limit */

/* constructors */
jj_val jj_undef_v(jj_rt *rt, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
jj_val jj_none(void);
jj_val jj_bool(int b);
jj_val jj_int(int64_t i);
jj_val jj_float(double f);
jj_val jj_str_v(jj_rt *rt, const char *s, size_t n);
jj_val jj_cstr(jj_rt *rt, const char *s);
jj_str *jj_str_new(jj_rt *rt, const char *s, size_t n);
jj_val jj_list_v(jj_rt *rt, size_t cap);
jj_val jj_tuple_v(jj_rt *rt, size_t cap);
jj_val jj_dict_v(jj_rt *rt);
void jj_list_push(jj_rt *rt, jj_list *l, jj_val v);
jj_val *jj_dict_get(const jj_dict *d, jj_val key);
jj_val *jj_dict_gets(const jj_dict *d, const char *key, size_t n);
void jj_dict_set(jj_rt *rt, jj_dict *d, jj_val key, jj_val v);

/* byte buffers (arena) */
void jj_buf_put(jj_rt *rt, jj_buf *b, const char *s, size_t n);
void jj_buf_puts(jj_rt *rt, jj_buf *b, const char *s);
void jj_buf_putc(jj_rt *rt, jj_buf *b, char c);
void jj_buf_putcp(jj_rt *rt, jj_buf *b, uint32_t cp);
jj_val jj_buf_val(jj_rt *rt, jj_buf *b);

/* Python semantics */
int jj_truthy(jj_rt *rt, jj_val v);
const char *jj_type_name(jj_val v);       /* Python's type name: "str", "dict", ... */
const char *jj_object_desc(jj_val v);     /* Jinja's object_type_repr: "dict object", "None" */
void jj_str_to(jj_rt *rt, jj_buf *b, jj_val v);   /* str(v) */
void jj_repr_to(jj_rt *rt, jj_buf *b, jj_val v);  /* repr(v) */
jj_str *jj_to_str(jj_rt *rt, jj_val v);   /* str(v) as a string */
void jj_float_repr(double f, char *out, size_t cap);
int jj_eq(jj_val a, jj_val b);
/* a < b as Python compares them; fails (TypeError) for unorderable types. */
int jj_lt(jj_rt *rt, const jj_node *at, jj_val a, jj_val b);
/* Materialises an iterable into an array (list, tuple, str -> chars, dict -> keys,
 * generator -> its remaining items (consumes), undefined -> empty). */
jj_list *jj_iterate(jj_rt *rt, const jj_node *at, jj_val v);
void jj_check_undef(jj_rt *rt, const jj_node *at, jj_val v); /* fails when v is undefined */
long jj_length(jj_rt *rt, const jj_node *at, jj_val v);   /* len(v) */

/* JSON */
jj_val jj_json_parse(jj_rt *rt, const char *text, size_t len, const char *what);
/* json.dumps(v, ensure_ascii, indent (NULL = none), separators (NULL = default),
 * sort_keys) */
void jj_json_dump(jj_rt *rt, const jj_node *at, jj_buf *b, jj_val v, int ensure_ascii,
                  const jj_str *indent, const jj_str *item_sep, const jj_str *key_sep,
                  int sort_keys);

/* UTF-8 */
uint32_t jj_utf8_next(const char *s, size_t n, size_t *i); /* decodes at *i, advances */
size_t jj_utf8_put(char *o, uint32_t cp);
long jj_str_ncp(jj_str *s);
/* byte offset of code point index k (k <= ncp) */
size_t jj_cp_offset(const jj_str *s, long k);
int jj_py_isspace(uint32_t cp);

/* Python str methods and formatting (jinja_methods.c) */
typedef struct jj_args {
    jj_val *pos;
    int n_pos;
    const char **kw;
    jj_val *kwv;
    int n_kw;
} jj_args;

int jj_method_id(jj_val self, const char *name, int *unsafe); /* -1 when none */
jj_val jj_call_method(jj_rt *rt, const jj_node *at, jj_method *m, jj_args *a);
jj_val jj_str_upper(jj_rt *rt, jj_val s);
jj_val jj_str_lower(jj_rt *rt, jj_val s);
jj_val jj_str_title(jj_rt *rt, jj_val s);
jj_val jj_str_capitalize(jj_rt *rt, jj_val s);
jj_val jj_str_strip(jj_rt *rt, jj_val s, const jj_str *chars, int left, int right);
jj_val jj_str_replace(jj_rt *rt, jj_val s, jj_val old, jj_val new_, int64_t count);
jj_val jj_percent_format(jj_rt *rt, const jj_node *at, jj_val fmt, jj_val args); /* jinja_format.c */
jj_val jj_str_format(jj_rt *rt, const jj_node *at, jj_val self, jj_args *a);         /* jinja_format.c */
/* A Markup string's method escapes its plain-string arguments (others pass). */
jj_val jj_markup_arg(jj_rt *rt, jj_val self, jj_val arg);
jj_val jj_html_escape(jj_rt *rt, jj_val v);
jj_val jj_str_split(jj_rt *rt, const jj_node *at, jj_val s, jj_val sep, int64_t maxsplit);
jj_list *jj_splitlines(jj_rt *rt, jj_val s, int keepends);

/* Binds call arguments to named parameters (Python rules: positional, then
 * keywords; unknown keywords and surplus positionals fail). out[i] is
 * JT_UNDEF with u.u == NULL when not given. */
void jj_bind(jj_rt *rt, const jj_node *at, const char *what, jj_args *a, const char *const *names,
             int n, jj_val *out);
#define JJ_MISSING(v) ((v).t == JT_UNDEF && (v).u.u == NULL)

/* filters and tests (jinja_filters.c) */
int jj_filter_id(const char *name);   /* -1 when unknown */
int jj_filter_unsupported(const char *name); /* a Jinja2 filter capmoe refuses */
int jj_test_id(const char *name);     /* -1 when unknown */
jj_val jj_apply_filter(jj_rt *rt, const jj_node *at, int fid, jj_val in, jj_args *a);
int jj_apply_test(jj_rt *rt, const jj_node *at, int tid, jj_val in, jj_args *a);
const char *jj_filter_name(int fid);

/* evaluator entry points the filters need (map/select with a filter / test name,
 * attribute lookup) */
jj_val jj_getattr(jj_rt *rt, const jj_node *at, jj_val obj, const char *name);
jj_val jj_getitem(jj_rt *rt, const jj_node *at, jj_val obj, jj_val key);
jj_val jj_call_value(jj_rt *rt, const jj_node *at, jj_val fn, jj_args *a);
jj_val jj_binop(jj_rt *rt, const jj_node *at, int op, jj_val a, jj_val b);
/* The next item of a generator: 1 and *out, or 0 at the end. */
int jj_gen_next(jj_rt *rt, jj_gen *g, jj_val *out);
void jj_exec(jj_rt *rt); /* renders the root block into rt->out */

/* global functions (JT_FUNC ids) */
enum { JF_RANGE = 1, JF_DICT, JF_NAMESPACE, JF_CYCLER, JF_JOINER, JF_RAISE, JF_STRFTIME };

/* method ids (JT_METHOD) */
enum {
    /* str */
    JM_STRIP = 1, JM_LSTRIP, JM_RSTRIP, JM_SPLIT, JM_RSPLIT, JM_SPLITLINES, JM_STARTSWITH,
    JM_ENDSWITH, JM_UPPER, JM_LOWER, JM_TITLE, JM_CAPITALIZE, JM_SWAPCASE, JM_CASEFOLD,
    JM_REPLACE, JM_FORMAT, JM_JOIN, JM_FIND, JM_RFIND, JM_INDEX, JM_RINDEX, JM_COUNT,
    JM_ISDIGIT, JM_ISALPHA, JM_ISALNUM, JM_ISSPACE, JM_ISLOWER, JM_ISUPPER, JM_ISNUMERIC,
    JM_ISDECIMAL, JM_ISTITLE, JM_CENTER, JM_LJUST, JM_RJUST, JM_ZFILL, JM_PARTITION,
    JM_RPARTITION, JM_REMOVEPREFIX, JM_REMOVESUFFIX, JM_EXPANDTABS,
    /* dict */
    JM_ITEMS, JM_KEYS, JM_VALUES, JM_GET, JM_COPY,
    /* list / tuple: JM_INDEX, JM_COUNT, JM_COPY */
    /* loop */
    JM_LOOP_CYCLE, JM_LOOP_CHANGED,
    /* cycler */
    JM_CYCLER_NEXT, JM_CYCLER_RESET,
    /* unsafe (mutating) methods: exist, fail when called */
    JM_UNSAFE
};

#endif
