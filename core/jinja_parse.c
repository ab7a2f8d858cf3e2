/* jinja_parse.c - tokens -> syntax tree, following Jinja2's parser: the same
 * statements, the same precedence (condexpr < or < and < not < comparisons <
 * + - < ~ < * / // % < ** < unary - + < postfix . [] () < filters and tests),
 * the same quirks (** is left-associative, `-x|f` filters the negation, a
 * test takes one argument without parentheses: `is divisibleby 3`).
 * Constructs a standalone chat template cannot use (extends, include,
 * import, block, autoescape, recursive loops) and unknown filters and tests
 * are refused here, when the template is compiled. */
#include <stdio.h>
#include <string.h>

#include "jinja_internal.h"

/* ---- token stream -------------------------------------------------------------------- */

static jj_tok *cur(jj_parse *p) { return &p->toks[p->pos]; }
static jj_tok *peek(jj_parse *p, size_t k) {
    size_t i = p->pos + k;
    return &p->toks[i < p->n_toks ? i : p->n_toks - 1];
}
static void advance(jj_parse *p) {
    if (p->pos + 1 < p->n_toks) p->pos++;
}
static int is_op(const jj_tok *t, const char *op) { return t->type == T_OP && !strcmp(t->op, op); }
static int is_name(const jj_tok *t, const char *name) {
    return t->type == T_NAME && !strcmp(t->s, name);
}

static const char *describe(const jj_tok *t, char *buf, size_t cap) {
    switch (t->type) {
    case T_EOF: return "end of template";
    case T_DATA: return "template data";
    case T_BLOCK_BEGIN: return "begin of statement block";
    case T_BLOCK_END: return "end of statement block";
    case T_VAR_BEGIN: return "begin of print statement";
    case T_VAR_END: return "end of print statement";
    case T_NAME: snprintf(buf, cap, "'%s'", t->s); return buf;
    case T_STRING: return "string";
    case T_INT: return "integer";
    case T_FLOAT: return "float";
    case T_OP: snprintf(buf, cap, "'%s'", t->op); return buf;
    }
    return "?";
}

static _Noreturn void fail_at(jj_parse *p, const jj_tok *t, const char *fmt, const char *a, const char *b) {
    jj_parse_fail(p, t->line, t->col, fmt, a, b);
}

static _Noreturn void unexpected(jj_parse *p, const char *expected) {
    char buf[64];
    const jj_tok *t = cur(p);
    if (expected) fail_at(p, t, "expected %s, got %s", expected, describe(t, buf, sizeof buf));
    fail_at(p, t, "unexpected %s%s", describe(t, buf, sizeof buf), "");
}

static void expect_op(jj_parse *p, const char *op) {
    if (!is_op(cur(p), op)) {
        char e[16];
        snprintf(e, sizeof e, "'%s'", op);
        unexpected(p, e);
    }
    advance(p);
}

static const char *expect_name(jj_parse *p) {
    if (cur(p)->type != T_NAME) unexpected(p, "a name");
    const char *s = cur(p)->s;
    advance(p);
    return s;
}

static void expect_type(jj_parse *p, int type, const char *what) {
    if (cur(p)->type != type) unexpected(p, what);
    advance(p);
}

static void count_cp(jj_str *s) {
    long k = 0;
    for (size_t i = 0; i < s->n; i++) k += ((unsigned char)s->p[i] & 0xC0) != 0x80;
    s->ncp = k; /* counted now: a compiled template is never written while rendering */
}

/* ---- nodes ----------------------------------------------------------------------------- */

static jj_node *mk(jj_parse *p, int kind, const jj_tok *t) {
    jj_node *n = jj_parse_alloc(p, sizeof *n);
    memset(n, 0, sizeof *n);
    n->kind = (uint8_t)kind;
    n->line = t->line;
    n->col = t->col;
    return n;
}

typedef struct vec {
    jj_node **v;
    const char **names;
    int n, cap;
} vec;

static void vpush(jj_parse *p, vec *v, jj_node *x, const char *name) {
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 4;
        jj_node **nv = jj_parse_alloc(p, sizeof *nv * (size_t)cap);
        const char **nn = jj_parse_alloc(p, sizeof *nn * (size_t)cap);
        if (v->n) {
            memcpy(nv, v->v, sizeof *nv * (size_t)v->n);
            memcpy(nn, v->names, sizeof *nn * (size_t)v->n);
        }
        v->v = nv;
        v->names = nn;
        v->cap = cap;
    }
    v->names[v->n] = name;
    v->v[v->n++] = x;
}

static void enter(jj_parse *p) {
    if (++p->depth > 200) fail_at(p, cur(p), "expression or statements nested too deeply (over %s levels)%s", "200", "");
}
static void leave(jj_parse *p) { p->depth--; }

/* ---- expressions ------------------------------------------------------------------------- */

static jj_node *parse_expression(jj_parse *p, int with_condexpr);
static jj_node *parse_tuple(jj_parse *p, int simplified, int with_condexpr, const char *extra_end,
                            int explicit_parens);
static jj_node *parse_primary(jj_parse *p);
static jj_node *parse_postfix(jj_parse *p, jj_node *node);
static jj_node *parse_unary(jj_parse *p, int with_filter);

static void parse_call_args(jj_parse *p, jj_node *n) {
    const jj_tok *lp = cur(p);
    expect_op(p, "(");
    vec args = {0}, kw = {0};
    int require_comma = 0;
    while (!is_op(cur(p), ")")) {
        if (require_comma) {
            expect_op(p, ",");
            if (is_op(cur(p), ")")) break;
        }
        if (is_op(cur(p), "*") || is_op(cur(p), "**"))
            fail_at(p, cur(p), "*args / **kwargs in calls are not supported%s%s", "", "");
        if (cur(p)->type == T_NAME && is_op(peek(p, 1), "=")) {
            const char *key = cur(p)->s;
            advance(p);
            advance(p);
            vpush(p, &kw, parse_expression(p, 1), key);
        } else {
            if (kw.n) fail_at(p, lp, "invalid syntax for function call expression (positional argument after keyword argument)%s%s", "", "");
            vpush(p, &args, parse_expression(p, 1), NULL);
        }
        require_comma = 1;
    }
    expect_op(p, ")");
    n->items = args.v;
    n->n_items = args.n;
    n->vals = kw.v;
    n->kw = kw.names;
    n->n_kw = kw.n;
}

static jj_node *parse_call(jj_parse *p, jj_node *fn) {
    jj_node *n = mk(p, N_CALL, cur(p));
    n->a = fn;
    parse_call_args(p, n);
    return n;
}

/* |name(args)... chained onto node (NULL: a filter block's input). */
static jj_node *parse_filter(jj_parse *p, jj_node *node, int start_inline) {
    while (is_op(cur(p), "|") || start_inline) {
        if (!start_inline) advance(p);
        const jj_tok *t = cur(p);
        const char *name = expect_name(p);
        if (is_op(cur(p), ".")) fail_at(p, t, "dotted filter names are not supported ('%s.')%s", name, "");
        jj_node *f = mk(p, N_FILTER, t);
        f->name = name;
        f->fid = jj_filter_id(name);
        if (f->fid < 0 && jj_filter_unsupported(name))
            fail_at(p, t, "filter '%s' is not supported by capmoe's chat template engine%s", name, "");
        if (f->fid < 0 && !p->soft) fail_at(p, t, "no filter named '%s'%s", name, "");
        if (f->fid < 0 && !p->unknown) p->unknown = t;
        f->a = node;
        if (is_op(cur(p), "(")) parse_call_args(p, f);
        node = f;
        start_inline = 0;
    }
    return node;
}

static jj_node *parse_test(jj_parse *p, jj_node *node) {
    const jj_tok *is = cur(p);
    advance(p);
    int negated = 0;
    if (is_name(cur(p), "not")) {
        advance(p);
        negated = 1;
    }
    const jj_tok *nt = cur(p);
    const char *name = expect_name(p);
    if (is_op(cur(p), ".")) fail_at(p, nt, "dotted test names are not supported ('%s.')%s", name, "");
    jj_node *n = mk(p, N_TEST, is);
    n->name = name;
    n->fid = jj_test_id(name);
    if (n->fid < 0 && !p->soft) fail_at(p, nt, "no test named '%s'%s", name, "");
    if (n->fid < 0 && !p->unknown) p->unknown = nt;
    n->a = node;
    n->flags = negated ? JJ_NEGATED : 0;
    const jj_tok *t = cur(p);
    if (is_op(t, "(")) {
        parse_call_args(p, n);
    } else if ((t->type == T_NAME || t->type == T_STRING || t->type == T_INT || t->type == T_FLOAT ||
                is_op(t, "(") || is_op(t, "[") || is_op(t, "{")) &&
               !is_name(t, "else") && !is_name(t, "or") && !is_name(t, "and")) {
        if (is_name(t, "is")) fail_at(p, t, "you cannot chain multiple tests with 'is'%s%s", "", "");
        jj_node *arg = parse_postfix(p, parse_primary(p));
        n->items = jj_parse_alloc(p, sizeof *n->items);
        n->items[0] = arg;
        n->n_items = 1;
    }
    return n;
}

static jj_node *parse_filter_expr(jj_parse *p, jj_node *node) {
    for (;;) {
        if (is_op(cur(p), "|")) node = parse_filter(p, node, 0);
        else if (is_name(cur(p), "is")) node = parse_test(p, node);
        else if (is_op(cur(p), "(")) node = parse_call(p, node);
        else break;
    }
    return node;
}

static jj_node *parse_subscribed(jj_parse *p) {
    const jj_tok *t = cur(p);
    jj_node *args[3] = {NULL, NULL, NULL};
    if (is_op(cur(p), ":")) {
        advance(p);
    } else {
        jj_node *e = parse_expression(p, 1);
        if (!is_op(cur(p), ":")) return e;
        advance(p);
        args[0] = e;
    }
    if (!is_op(cur(p), ":") && !is_op(cur(p), "]") && !is_op(cur(p), ","))
        args[1] = parse_expression(p, 1);
    if (is_op(cur(p), ":")) {
        advance(p);
        if (!is_op(cur(p), "]") && !is_op(cur(p), ",")) args[2] = parse_expression(p, 1);
    }
    jj_node *s = mk(p, N_SLICE, t);
    s->b = args[0];
    s->c = args[1];
    s->d = args[2];
    return s;
}

static jj_node *parse_subscript(jj_parse *p, jj_node *node) {
    const jj_tok *t = cur(p);
    advance(p);
    if (t->type == T_OP && !strcmp(t->op, ".")) {
        const jj_tok *a = cur(p);
        advance(p);
        if (a->type == T_NAME) {
            jj_node *g = mk(p, N_GETATTR, t);
            g->a = node;
            g->name = a->s;
            return g;
        }
        if (a->type != T_INT) fail_at(p, a, "expected name or number after '.'%s%s", "", "");
        jj_node *k = mk(p, N_CONST, a);
        k->cval = jj_int(a->i);
        jj_node *g = mk(p, N_GETITEM, t);
        g->a = node;
        g->b = k;
        return g;
    }
    vec args = {0};
    while (!is_op(cur(p), "]")) {
        if (args.n) expect_op(p, ",");
        vpush(p, &args, parse_subscribed(p), NULL);
    }
    expect_op(p, "]");
    if (args.n == 0) fail_at(p, t, "expected subscript expression%s%s", "", "");
    jj_node *key = args.v[0];
    if (args.n > 1) {
        key = mk(p, N_TUPLE, t);
        key->items = args.v;
        key->n_items = args.n;
    }
    if (key->kind == N_SLICE) {
        key->a = node;
        return key;
    }
    jj_node *g = mk(p, N_GETITEM, t);
    g->a = node;
    g->b = key;
    return g;
}

static jj_node *parse_postfix(jj_parse *p, jj_node *node) {
    for (;;) {
        if (is_op(cur(p), ".") || is_op(cur(p), "[")) node = parse_subscript(p, node);
        else if (is_op(cur(p), "(")) node = parse_call(p, node);
        else break;
    }
    return node;
}

static jj_node *parse_primary(jj_parse *p) {
    const jj_tok *t = cur(p);
    enter(p);
    jj_node *n;
    if (t->type == T_NAME) {
        n = mk(p, N_CONST, t);
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True")) n->cval = jj_bool(1);
        else if (!strcmp(t->s, "false") || !strcmp(t->s, "False")) n->cval = jj_bool(0);
        else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) n->cval = jj_none();
        else {
            n->kind = N_NAME;
            n->name = t->s;
        }
        advance(p);
    } else if (t->type == T_STRING) {
        size_t total = 0, k = p->pos;
        for (; p->toks[k].type == T_STRING; k++) total += p->toks[k].n;
        jj_str *s = jj_parse_alloc(p, sizeof *s + total + 1);
        s->n = 0;
        s->ncp = -1;
        while (cur(p)->type == T_STRING) {
            memcpy(s->p + s->n, cur(p)->s, cur(p)->n);
            s->n += cur(p)->n;
            advance(p);
        }
        s->p[s->n] = '\0';
        count_cp(s);
        n = mk(p, N_CONST, t);
        n->cval.t = JT_STR;
        n->cval.u.s = s;
    } else if (t->type == T_INT || t->type == T_FLOAT) {
        n = mk(p, N_CONST, t);
        n->cval = t->type == T_INT ? jj_int(t->i) : jj_float(t->f);
        advance(p);
    } else if (is_op(t, "(")) {
        advance(p);
        n = parse_tuple(p, 0, 1, NULL, 1);
        expect_op(p, ")");
    } else if (is_op(t, "[")) {
        advance(p);
        vec items = {0};
        while (!is_op(cur(p), "]")) {
            if (items.n) expect_op(p, ",");
            if (is_op(cur(p), "]")) break;
            vpush(p, &items, parse_expression(p, 1), NULL);
        }
        expect_op(p, "]");
        n = mk(p, N_LIST, t);
        n->items = items.v;
        n->n_items = items.n;
    } else if (is_op(t, "{")) {
        advance(p);
        vec keys = {0}, vals = {0};
        while (!is_op(cur(p), "}")) {
            if (keys.n) expect_op(p, ",");
            if (is_op(cur(p), "}")) break;
            vpush(p, &keys, parse_expression(p, 1), NULL);
            expect_op(p, ":");
            vpush(p, &vals, parse_expression(p, 1), NULL);
        }
        expect_op(p, "}");
        n = mk(p, N_DICT, t);
        n->items = keys.v;
        n->n_items = keys.n;
        n->vals = vals.v;
        n->n_kw = vals.n;
    } else {
        unexpected(p, NULL);
    }
    leave(p);
    return n;
}

static jj_node *parse_unary(jj_parse *p, int with_filter) {
    const jj_tok *t = cur(p);
    enter(p);
    jj_node *n;
    if (is_op(t, "-") || is_op(t, "+")) {
        advance(p);
        n = mk(p, N_UNARY, t);
        n->op = is_op(t, "-") ? OP_NEG : OP_POS;
        n->a = parse_unary(p, 0);
    } else {
        n = parse_primary(p);
    }
    n = parse_postfix(p, n);
    if (with_filter) n = parse_filter_expr(p, n);
    leave(p);
    return n;
}

static jj_node *binop(jj_parse *p, const jj_tok *t, int op, jj_node *l, jj_node *r) {
    jj_node *n = mk(p, N_BINOP, t);
    n->op = (uint8_t)op;
    n->a = l;
    n->b = r;
    return n;
}

static jj_node *parse_pow(jj_parse *p) {
    jj_node *l = parse_unary(p, 1);
    while (is_op(cur(p), "**")) {
        const jj_tok *t = cur(p);
        advance(p);
        l = binop(p, t, OP_POW, l, parse_unary(p, 1));
    }
    return l;
}

static jj_node *parse_math2(jj_parse *p) {
    jj_node *l = parse_pow(p);
    for (;;) {
        const jj_tok *t = cur(p);
        int op = is_op(t, "*") ? OP_MUL : is_op(t, "/") ? OP_DIV : is_op(t, "//") ? OP_FLOORDIV
               : is_op(t, "%") ? OP_MOD : 0;
        if (!op) return l;
        advance(p);
        l = binop(p, t, op, l, parse_pow(p));
    }
}

static jj_node *parse_concat(jj_parse *p) {
    jj_node *l = parse_math2(p);
    while (is_op(cur(p), "~")) {
        const jj_tok *t = cur(p);
        advance(p);
        l = binop(p, t, OP_CONCAT, l, parse_math2(p));
    }
    return l;
}

static jj_node *parse_math1(jj_parse *p) {
    jj_node *l = parse_concat(p);
    for (;;) {
        const jj_tok *t = cur(p);
        int op = is_op(t, "+") ? OP_ADD : is_op(t, "-") ? OP_SUB : 0;
        if (!op) return l;
        advance(p);
        l = binop(p, t, op, l, parse_concat(p));
    }
}

static jj_node *parse_compare(jj_parse *p) {
    const jj_tok *t0 = cur(p);
    jj_node *first = parse_math1(p);
    vec ops = {0};
    uint8_t opcodes[64];
    for (;;) {
        const jj_tok *t = cur(p);
        int op = is_op(t, "==") ? OP_EQ : is_op(t, "!=") ? OP_NE : is_op(t, "<") ? OP_LT
               : is_op(t, "<=") ? OP_LE : is_op(t, ">") ? OP_GT : is_op(t, ">=") ? OP_GE : 0;
        if (op) {
            advance(p);
        } else if (is_name(t, "in")) {
            advance(p);
            op = OP_IN;
        } else if (is_name(t, "not") && is_name(peek(p, 1), "in")) {
            advance(p);
            advance(p);
            op = OP_NOTIN;
        } else {
            break;
        }
        if (ops.n == 64) fail_at(p, t, "too many chained comparisons%s%s", "", "");
        opcodes[ops.n] = (uint8_t)op;
        vpush(p, &ops, parse_math1(p), NULL);
    }
    if (!ops.n) return first;
    jj_node *n = mk(p, N_COMPARE, t0);
    n->a = first;
    n->items = ops.v;
    n->n_items = ops.n;
    n->ops = jj_parse_alloc(p, (size_t)ops.n);
    memcpy(n->ops, opcodes, (size_t)ops.n);
    return n;
}

static jj_node *parse_not(jj_parse *p) {
    if (is_name(cur(p), "not")) {
        const jj_tok *t = cur(p);
        advance(p);
        enter(p);
        jj_node *n = mk(p, N_UNARY, t);
        n->op = OP_NOT;
        n->a = parse_not(p);
        leave(p);
        return n;
    }
    return parse_compare(p);
}

static jj_node *parse_and(jj_parse *p) {
    jj_node *l = parse_not(p);
    while (is_name(cur(p), "and")) {
        const jj_tok *t = cur(p);
        advance(p);
        jj_node *n = mk(p, N_AND, t);
        n->a = l;
        n->b = parse_not(p);
        l = n;
    }
    return l;
}

static jj_node *parse_or(jj_parse *p) {
    jj_node *l = parse_and(p);
    while (is_name(cur(p), "or")) {
        const jj_tok *t = cur(p);
        advance(p);
        jj_node *n = mk(p, N_OR, t);
        n->a = l;
        n->b = parse_and(p);
        l = n;
    }
    return l;
}

/* An inline if (`a if b else c`) is a soft frame in Jinja2, `a` included,
 * which is parsed before the "if" shows: `a` is parsed as soft, and an
 * unknown filter or test met in it is refused when no "if" follows. */
static jj_node *parse_condexpr(jj_parse *p) {
    enter(p);
    int soft = p->soft;
    const jj_tok *outer_unknown = p->unknown;
    p->unknown = NULL;
    p->soft = 1;
    jj_node *e1 = parse_or(p);
    int inline_if = is_name(cur(p), "if");
    if (!inline_if && p->unknown) {
        if (!soft) {
            const jj_tok *u = p->unknown;
            char kind[8];
            snprintf(kind, sizeof kind, "%s", u > p->toks && u[-1].type == T_OP && !strcmp(u[-1].op, "|") ? "filter" : "test");
            fail_at(p, u, "no %s named '%s'", kind, u->s);
        }
        if (!outer_unknown) outer_unknown = p->unknown; /* still pending for the enclosing expression */
    }
    p->unknown = outer_unknown;
    while (is_name(cur(p), "if")) {
        const jj_tok *t = cur(p);
        advance(p);
        jj_node *n = mk(p, N_COND, t);
        n->a = parse_or(p);
        n->b = e1;
        if (is_name(cur(p), "else")) {
            advance(p);
            n->c = parse_condexpr(p);
        }
        e1 = n;
    }
    p->soft = soft;
    leave(p);
    return e1;
}

static jj_node *parse_expression(jj_parse *p, int with_condexpr) {
    return with_condexpr ? parse_condexpr(p) : parse_or(p);
}

static int tuple_end(jj_parse *p, const char *extra_end) {
    const jj_tok *t = cur(p);
    if (t->type == T_VAR_END || t->type == T_BLOCK_END || is_op(t, ")")) return 1;
    return extra_end && is_name(t, extra_end);
}

static jj_node *parse_tuple(jj_parse *p, int simplified, int with_condexpr, const char *extra_end,
                            int explicit_parens) {
    const jj_tok *t0 = cur(p);
    vec args = {0};
    int is_tuple = 0;
    for (;;) {
        if (args.n) expect_op(p, ",");
        if (tuple_end(p, extra_end)) break;
        vpush(p, &args, simplified ? parse_primary(p) : parse_expression(p, with_condexpr), NULL);
        if (is_op(cur(p), ",")) is_tuple = 1;
        else break;
    }
    if (!is_tuple) {
        if (args.n) return args.v[0];
        if (!explicit_parens) unexpected(p, "an expression");
    }
    jj_node *n = mk(p, N_TUPLE, t0);
    n->items = args.v;
    n->n_items = args.n;
    return n;
}

/* ---- statements ---------------------------------------------------------------------------- */

static jj_node *subparse(jj_parse *p, const char *const *end_tokens);

/* Names only (or tuples of names) can be assigned. */
static void check_target(jj_parse *p, jj_node *t) {
    if (t->kind == N_NAME) return;
    if (t->kind == N_TUPLE) {
        for (int i = 0; i < t->n_items; i++) check_target(p, t->items[i]);
        return;
    }
    jj_parse_fail(p, t->line, t->col, "cannot assign to this expression (only names and tuples of names)");
}

static jj_node *parse_assign_target(jj_parse *p, int with_namespace, const char *extra_end) {
    if (with_namespace && cur(p)->type == T_NAME && is_op(peek(p, 1), ".")) {
        const jj_tok *t = cur(p);
        jj_node *n = mk(p, N_NSREF, t);
        n->name = expect_name(p);
        advance(p);
        n->attr = expect_name(p);
        return n;
    }
    jj_node *t = parse_tuple(p, 1, 1, extra_end, 0);
    check_target(p, t);
    return t;
}

/* Parses statements until one of end_tokens; the current token is then that name. */
/* A body in a new frame (for, macro, call, filter, with, block set): not soft. */
static jj_node *parse_statements(jj_parse *p, const char *const *end_tokens, int drop_needle);
static jj_node *parse_inner(jj_parse *p, const char *const *end_tokens, int drop_needle) {
    int soft = p->soft;
    p->soft = 0;
    jj_node *b = parse_statements(p, end_tokens, drop_needle);
    p->soft = soft;
    return b;
}

static jj_node *parse_statements(jj_parse *p, const char *const *end_tokens, int drop_needle) {
    if (is_op(cur(p), ":")) advance(p);
    expect_type(p, T_BLOCK_END, "end of statement block");
    jj_node *body = subparse(p, end_tokens);
    if (cur(p)->type == T_EOF) {
        char want[128] = "";
        for (int i = 0; end_tokens[i]; i++) {
            strncat(want, i ? " or '" : "'", sizeof want - strlen(want) - 1);
            strncat(want, end_tokens[i], sizeof want - strlen(want) - 1);
            strncat(want, "'", sizeof want - strlen(want) - 1);
        }
        fail_at(p, cur(p), "unexpected end of template: expected %s%s", want, "");
    }
    if (drop_needle) advance(p);
    return body;
}

static void parse_signature(jj_parse *p, jj_node *n) {
    expect_op(p, "(");
    vec args = {0}, defs = {0};
    int have_default = 0;
    while (!is_op(cur(p), ")")) {
        if (args.n) expect_op(p, ",");
        const jj_tok *t = cur(p);
        jj_node *a = mk(p, N_NAME, t);
        a->name = expect_name(p);
        for (int k = 0; k < args.n; k++)
            if (args.v[k]->name == a->name) fail_at(p, t, "duplicate argument '%s' in the signature%s", a->name, "");
        jj_node *d = NULL;
        if (is_op(cur(p), "=")) {
            advance(p);
            d = parse_expression(p, 1);
            have_default = 1;
        } else if (have_default) {
            fail_at(p, t, "non-default argument follows default argument%s%s", "", "");
        }
        vpush(p, &args, a, NULL);
        vpush(p, &defs, d, NULL);
    }
    expect_op(p, ")");
    n->items = args.v;
    n->n_items = args.n;
    n->vals = defs.v;
}

/* Flags for what a macro body reads (varargs, kwargs, caller). */
static int reads(const jj_node *n, const char *name) {
    if (!n) return 0;
    if (n->kind == N_NAME && !strcmp(n->name, name)) return 1;
    if (reads(n->a, name) || reads(n->b, name) || reads(n->c, name) || reads(n->d, name)) return 1;
    for (int i = 0; i < n->n_items; i++)
        if (reads(n->items[i], name)) return 1;
    if (n->kind != N_NAME) /* vals of N_MACRO are defaults; of others, values */
        for (int i = 0; i < (n->kind == N_MACRO || n->kind == N_CALLBLOCK ? n->n_items : n->n_kw); i++)
            if (n->vals && reads(n->vals[i], name)) return 1;
    return 0;
}

static void macro_flags(jj_node *n) {
    if (reads(n->d, "varargs")) n->flags |= JJ_VARARGS;
    if (reads(n->d, "kwargs")) n->flags |= JJ_KWARGS;
    if (reads(n->d, "caller")) n->flags |= JJ_CALLER;
}

static const char *const END_FOR[] = {"endfor", "else", NULL};
static const char *const END_FOR2[] = {"endfor", NULL};
static const char *const END_IF[] = {"elif", "else", "endif", NULL};
static const char *const END_IF2[] = {"endif", NULL};
static const char *const END_SET[] = {"endset", NULL};
static const char *const END_MACRO[] = {"endmacro", NULL};
static const char *const END_CALL[] = {"endcall", NULL};
static const char *const END_FILTER[] = {"endfilter", NULL};
static const char *const END_WITH[] = {"endwith", NULL};
static const char *const END_GEN[] = {"endgeneration", NULL};

static jj_node *parse_statement(jj_parse *p) {
    const jj_tok *t = cur(p);
    if (t->type != T_NAME) unexpected(p, "a tag name");
    const char *kw = t->s;
    enter(p);
    jj_node *n = NULL;
    if (!strcmp(kw, "for")) {
        advance(p);
        n = mk(p, N_FOR, t);
        n->a = parse_assign_target(p, 0, "in");
        if (!is_name(cur(p), "in")) unexpected(p, "'in'");
        advance(p);
        n->b = parse_tuple(p, 0, 0, "recursive", 0);
        if (is_name(cur(p), "if")) {
            advance(p);
            int soft = p->soft;
            p->soft = 0;
            n->c = parse_expression(p, 1);
            p->soft = soft;
        }
        if (is_name(cur(p), "recursive"))
            fail_at(p, cur(p), "recursive for loops are not supported%s%s", "", "");
        p->loops++;
        jj_node *body = parse_inner(p, END_FOR, 0);
        p->loops--;
        n->items = body->items;
        n->n_items = body->n_items;
        int is_else = is_name(cur(p), "else");
        advance(p);
        if (is_else) n->d = parse_inner(p, END_FOR2, 1);
    } else if (!strcmp(kw, "if")) {
        advance(p);
        n = mk(p, N_IF, t);
        jj_node *node = n;
        int soft = p->soft;
        p->soft = 1;
        for (;;) {
            node->a = parse_tuple(p, 0, 0, NULL, 0);
            jj_node *body = parse_statements(p, END_IF, 0);
            node->items = body->items;
            node->n_items = body->n_items;
            const jj_tok *e = cur(p);
            advance(p);
            if (is_name(e, "elif")) {
                jj_node *next = mk(p, N_IF, e);
                node->b = next;
                node = next;
                continue;
            }
            if (is_name(e, "else")) node->b = parse_statements(p, END_IF2, 1);
            break;
        }
        p->soft = soft;
    } else if (!strcmp(kw, "set")) {
        advance(p);
        jj_node *target = parse_assign_target(p, 1, NULL);
        if (is_op(cur(p), "=")) {
            advance(p);
            n = mk(p, N_SET, t);
            n->a = target;
            n->b = parse_tuple(p, 0, 1, NULL, 0);
        } else {
            n = mk(p, N_SETBLOCK, t);
            n->a = target;
            int soft = p->soft;
            p->soft = 0;
            n->c = parse_filter(p, NULL, 0);
            p->soft = soft;
            n->d = parse_inner(p, END_SET, 1);
        }
    } else if (!strcmp(kw, "macro")) {
        advance(p);
        n = mk(p, N_MACRO, t);
        n->name = expect_name(p);
        int soft = p->soft;
        p->soft = 0;
        parse_signature(p, n);
        p->soft = soft;
        int loops = p->loops;
        p->loops = 0;
        n->d = parse_inner(p, END_MACRO, 1);
        p->loops = loops;
        macro_flags(n);
    } else if (!strcmp(kw, "call")) {
        advance(p);
        n = mk(p, N_CALLBLOCK, t);
        n->name = "caller";
        if (is_op(cur(p), "(")) parse_signature(p, n);
        jj_node *call = parse_expression(p, 1);
        if (call->kind != N_CALL) jj_parse_fail(p, t->line, t->col, "{%% call %%} expects a call");
        n->a = call;
        int loops = p->loops;
        p->loops = 0;
        n->d = parse_inner(p, END_CALL, 1);
        p->loops = loops;
        macro_flags(n);
    } else if (!strcmp(kw, "filter")) {
        advance(p);
        n = mk(p, N_FILTERBLOCK, t);
        int soft = p->soft;
        p->soft = 0;
        n->c = parse_filter(p, NULL, 1);
        p->soft = soft;
        n->d = parse_inner(p, END_FILTER, 1);
    } else if (!strcmp(kw, "with")) {
        advance(p);
        n = mk(p, N_WITH, t);
        vec targets = {0}, vals = {0};
        while (cur(p)->type != T_BLOCK_END) {
            if (targets.n) expect_op(p, ",");
            jj_node *tg = parse_assign_target(p, 0, NULL);
            expect_op(p, "=");
            vpush(p, &targets, tg, NULL);
            vpush(p, &vals, parse_expression(p, 1), NULL);
        }
        n->items = targets.v;
        n->n_items = targets.n;
        n->vals = vals.v;
        n->n_kw = vals.n;
        n->d = parse_inner(p, END_WITH, 1);
    } else if (!strcmp(kw, "print")) {
        advance(p);
        n = mk(p, N_OUTPUT, t);
        jj_node *e = parse_tuple(p, 0, 1, NULL, 0);
        n->items = jj_parse_alloc(p, sizeof *n->items);
        n->items[0] = e;
        n->n_items = 1;
    } else if (!strcmp(kw, "break") || !strcmp(kw, "continue")) {
        if (!p->loops) fail_at(p, t, "'%s' outside of a for loop%s", kw, "");
        advance(p);
        n = mk(p, kw[0] == 'b' ? N_BREAK : N_CONTINUE, t);
    } else if (!strcmp(kw, "generation")) {
        advance(p);
        n = mk(p, N_GENERATION, t);
        n->d = parse_inner(p, END_GEN, 1);
    } else if (!strcmp(kw, "extends") || !strcmp(kw, "include") || !strcmp(kw, "import") ||
               !strcmp(kw, "from") || !strcmp(kw, "block")) {
        fail_at(p, t, "{%% %s %%} is not supported: a chat template is rendered on its own, "
                "without other templates%s", kw, "");
    } else if (!strcmp(kw, "autoescape")) {
        fail_at(p, t, "{%% %s %%} is not supported (transformers renders without autoescaping)%s", kw, "");
    } else if (!strcmp(kw, "do")) {
        fail_at(p, t, "{%% %s %%} is not supported: transformers does not enable the 'do' extension%s", kw, "");
    } else {
        fail_at(p, t, "unknown tag '%s'%s", kw, "");
    }
    leave(p);
    return n;
}

/* A body: statements and output until one of end_tokens (NULL: end of template). */
static jj_node *subparse(jj_parse *p, const char *const *end_tokens) {
    jj_node *block = mk(p, N_BLOCK, cur(p));
    vec body = {0}, data = {0};
    const jj_tok *data_tok = NULL;
    for (;;) {
        const jj_tok *t = cur(p);
        if (t->type == T_EOF) break;
        if (t->type == T_DATA) {
            if (!data.n) data_tok = t;
            jj_node *d = mk(p, N_DATA, t);
            d->cval.t = JT_STR;
            jj_str *s = jj_parse_alloc(p, sizeof *s + t->n + 1);
            s->n = t->n;
            s->ncp = -1;
            memcpy(s->p, t->s, t->n + 1);
            count_cp(s);
            d->cval.u.s = s;
            vpush(p, &data, d, NULL);
            advance(p);
        } else if (t->type == T_VAR_BEGIN) {
            if (!data.n) data_tok = t;
            advance(p);
            vpush(p, &data, parse_tuple(p, 0, 1, NULL, 0), NULL);
            expect_type(p, T_VAR_END, "end of print statement ('}}')");
        } else if (t->type == T_BLOCK_BEGIN) {
            if (data.n) {
                jj_node *o = mk(p, N_OUTPUT, data_tok);
                o->items = data.v;
                o->n_items = data.n;
                vpush(p, &body, o, NULL);
                data = (vec){0};
            }
            advance(p);
            if (end_tokens) {
                int end = 0;
                for (int i = 0; end_tokens[i]; i++)
                    if (is_name(cur(p), end_tokens[i])) end = 1;
                if (end) {
                    block->items = body.v;
                    block->n_items = body.n;
                    return block;
                }
            }
            if (cur(p)->type == T_NAME) {
                const char *k = cur(p)->s;
                if (!strncmp(k, "end", 3) || !strcmp(k, "else") || !strcmp(k, "elif"))
                    fail_at(p, cur(p), "unexpected '%s' (no open block ends here)%s", k, "");
            }
            vpush(p, &body, parse_statement(p), NULL);
            expect_type(p, T_BLOCK_END, "end of statement block ('%}')");
        } else {
            unexpected(p, NULL);
        }
    }
    if (data.n) {
        jj_node *o = mk(p, N_OUTPUT, data_tok);
        o->items = data.v;
        o->n_items = data.n;
        vpush(p, &body, o, NULL);
    }
    block->items = body.v;
    block->n_items = body.n;
    return block;
}

void jj_parse_template(jj_parse *p) {
    p->pos = 0;
    p->t->root = subparse(p, NULL);
}
