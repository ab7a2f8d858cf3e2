/* jinja_eval.c - the evaluator: statements, expressions, scopes, macros.
 *
 * Scopes follow Jinja2: every iteration of a for loop, a macro call, a with
 * block, a filter block and a block set get a new scope whose parent is the
 * enclosing one; `set` writes to the innermost scope, so a variable set in
 * a loop body is gone after the iteration (namespace() attributes are the
 * way out, as in Jinja2); if/elif/else have no scope of their own. Lookups go
 * up the scopes, then to the render variables, then to the global functions.
 * Attribute and item access follow the sandbox's getattr/getitem: x.name
 * prefers a method of the value, x['name'] the item; a missing one is an
 * Undefined that renders as "" and fails when used. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jinja_internal.h"

static jj_val eval(jj_rt *rt, jj_scope *sc, const jj_node *n);
static void exec_block(jj_rt *rt, jj_scope *sc, jj_node *const *stmts, int n);

/* ---- errors, memory, limits ------------------------------------------------------------------ */

_Noreturn void jj_fail(jj_rt *rt, const jj_node *at, const char *fmt, ...) {
    if (!at) at = rt->at;
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (at) capmoe_set_error(rt->err, "%s, line %d, column %d: %s", rt->t->name, at->line, at->col, msg);
    else capmoe_set_error(rt->err, "%s: %s", rt->t->name, msg);
    longjmp(rt->jb, 1);
}

void *jj_alloc(jj_rt *rt, size_t n) {
    void *p = jj_arena_alloc(&rt->arena, n);
    if (!p)
        jj_fail(rt, NULL, "the render needs more than %zu MiB of memory (the limit of one render)",
                rt->arena.limit >> 20);
    return p;
}

void jj_step(jj_rt *rt, const jj_node *at) {
    if (--rt->steps_left < 0)
        jj_fail(rt, at, "the render takes too many steps (loop iterations, calls and filters): "
                "over the limit of one render");
}

static void emit(jj_rt *rt, const char *s, size_t n) {
    if (rt->out->n + n > rt->max_output)
        jj_fail(rt, NULL, "the output exceeds %zu bytes (the limit of one render)", rt->max_output);
    jj_buf_put(rt, rt->out, s, n);
}

/* ---- scopes ---------------------------------------------------------------------------------- */

static jj_scope *scope_new(jj_rt *rt, jj_scope *parent) {
    jj_scope *s = jj_alloc(rt, sizeof *s);
    memset(s, 0, sizeof *s);
    s->parent = parent;
    return s;
}

static void scope_set(jj_rt *rt, jj_scope *s, const char *name, jj_val v) {
    for (size_t i = 0; i < s->n; i++)
        if (s->names[i] == name) {
            s->vals[i] = v;
            return;
        }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4;
        const char **nn = jj_alloc(rt, sizeof *nn * cap);
        jj_val *nv = jj_alloc(rt, sizeof *nv * cap);
        if (s->n) {
            memcpy(nn, s->names, sizeof *nn * s->n);
            memcpy(nv, s->vals, sizeof *nv * s->n);
        }
        s->names = nn;
        s->vals = nv;
        s->cap = cap;
    }
    s->names[s->n] = name;
    s->vals[s->n++] = v;
}

static const struct {
    const char *name;
    int id;
} GLOBALS[] = {
    {"range", JF_RANGE},       {"dict", JF_DICT},     {"namespace", JF_NAMESPACE},
    {"cycler", JF_CYCLER},     {"joiner", JF_JOINER}, {"raise_exception", JF_RAISE},
    {"strftime_now", JF_STRFTIME},
};

static jj_val lookup(jj_rt *rt, jj_scope *sc, const char *name) {
    for (jj_scope *s = sc; s; s = s->parent)
        for (size_t i = 0; i < s->n; i++)
            if (s->names[i] == name) return s->vals[i];
    if (rt->vars) {
        jj_val *v = jj_dict_gets(rt->vars, name, strlen(name));
        if (v) return *v;
    }
    for (size_t i = 0; i < sizeof GLOBALS / sizeof GLOBALS[0]; i++)
        if (!strcmp(GLOBALS[i].name, name)) {
            jj_val f = jj_none();
            f.t = JT_FUNC;
            f.u.i = GLOBALS[i].id;
            return f;
        }
    return jj_undef_v(rt, "'%s' is undefined", name);
}

/* ---- attribute and item access ------------------------------------------------------------------ */

static jj_val method_v(jj_rt *rt, jj_val self, int id, const char *name) {
    jj_val v = jj_none();
    v.t = JT_METHOD;
    v.u.me = jj_alloc(rt, sizeof *v.u.me);
    v.u.me->self = self;
    v.u.me->id = id;
    v.u.me->name = name;
    return v;
}

static jj_val unsafe_v(jj_rt *rt, jj_val obj, const char *name) {
    return jj_undef_v(rt, "access to attribute '%s' of '%s' object is unsafe.", name, jj_type_name(obj));
}

static jj_val loop_attr(jj_rt *rt, jj_val obj, const char *name) {
    jj_loop *lp = obj.u.lp;
    long n = (long)lp->n, i = (long)lp->i;
    if (!strcmp(name, "index")) return jj_int(i + 1);
    if (!strcmp(name, "index0")) return jj_int(i);
    if (!strcmp(name, "revindex")) return jj_int(n - i);
    if (!strcmp(name, "revindex0")) return jj_int(n - i - 1);
    if (!strcmp(name, "first")) return jj_bool(i == 0);
    if (!strcmp(name, "last")) return jj_bool(i == n - 1);
    if (!strcmp(name, "length")) return jj_int(n);
    if (!strcmp(name, "depth")) return jj_int(lp->depth);
    if (!strcmp(name, "depth0")) return jj_int(lp->depth - 1);
    if (!strcmp(name, "previtem"))
        return i > 0 ? lp->items[i - 1] : jj_undef_v(rt, "there is no previous item");
    if (!strcmp(name, "nextitem"))
        return i + 1 < n ? lp->items[i + 1] : jj_undef_v(rt, "there is no next item");
    if (!strcmp(name, "cycle")) return method_v(rt, obj, JM_LOOP_CYCLE, "cycle");
    if (!strcmp(name, "changed")) return method_v(rt, obj, JM_LOOP_CHANGED, "changed");
    return jj_undef_v(rt, "'%s' has no attribute '%s'", jj_object_desc(obj), name);
}

jj_val jj_getattr(jj_rt *rt, const jj_node *at, jj_val obj, const char *name) {
    int unsafe = 0, id;
    switch (obj.t) {
    case JT_UNDEF: jj_check_undef(rt, at, obj); break;
    case JT_DICT: {
        if ((id = jj_method_id(obj, name, &unsafe)) > 0)
            return unsafe ? unsafe_v(rt, obj, name) : method_v(rt, obj, id, name);
        jj_val *v = jj_dict_gets(obj.u.d, name, strlen(name));
        if (v) return *v;
        break;
    }
    case JT_STR:
    case JT_LIST:
    case JT_TUPLE:
        if ((id = jj_method_id(obj, name, &unsafe)) > 0)
            return unsafe ? unsafe_v(rt, obj, name) : method_v(rt, obj, id, name);
        break;
    case JT_NS: {
        jj_val *v = jj_dict_gets(obj.u.d, name, strlen(name));
        if (v) return *v;
        break;
    }
    case JT_LOOP: return loop_attr(rt, obj, name);
    case JT_CYCLER:
        if (!strcmp(name, "current")) return obj.u.cy->items->v[obj.u.cy->pos];
        if (!strcmp(name, "next")) return method_v(rt, obj, JM_CYCLER_NEXT, "next");
        if (!strcmp(name, "reset")) return method_v(rt, obj, JM_CYCLER_RESET, "reset");
        break;
    default: break;
    }
    return jj_undef_v(rt, "'%s' has no attribute '%s'", jj_object_desc(obj), name);
}

static jj_val no_element(jj_rt *rt, jj_val obj, jj_val key) {
    jj_buf b = {0};
    jj_repr_to(rt, &b, key);
    return jj_undef_v(rt, "%s has no element %s", jj_object_desc(obj), b.p ? b.p : "");
}

jj_val jj_getitem(jj_rt *rt, const jj_node *at, jj_val obj, jj_val key) {
    switch (obj.t) {
    case JT_UNDEF: jj_check_undef(rt, at, obj); break;
    case JT_DICT: {
        if (key.t == JT_LIST || key.t == JT_DICT) break; /* unhashable: TypeError -> undefined */
        jj_val *v = jj_dict_get(obj.u.d, key);
        if (v) return *v;
        break;
    }
    case JT_LIST:
    case JT_TUPLE:
    case JT_STR:
        if (key.t == JT_INT || key.t == JT_BOOL) {
            int64_t i = key.u.i;
            if (obj.t == JT_STR) {
                long n = jj_str_ncp(obj.u.s);
                if (i < 0) i += n;
                if (i < 0 || i >= n) return no_element(rt, obj, key);
                size_t a = jj_cp_offset(obj.u.s, (long)i), e = a;
                jj_utf8_next(obj.u.s->p, obj.u.s->n, &e);
                jj_val c = jj_str_v(rt, obj.u.s->p + a, e - a);
                c.markup = obj.markup;
                return c;
            }
            int64_t n = (int64_t)obj.u.l->n;
            if (i < 0) i += n;
            if (i < 0 || i >= n) return no_element(rt, obj, key);
            return obj.u.l->v[i];
        }
        break;
    default: break;
    }
    if (key.t == JT_STR) return jj_getattr(rt, at, obj, key.u.s->p);
    return no_element(rt, obj, key);
}

/* Python slice indices of a sequence of length n. */
static void slice_indices(jj_rt *rt, const jj_node *at, jj_val start, jj_val stop, jj_val step, int64_t n,
                          int64_t *a, int64_t *b, int64_t *s) {
    jj_val parts[3] = {start, stop, step};
    for (int k = 0; k < 3; k++) {
        if (parts[k].t == JT_UNDEF) jj_check_undef(rt, at, parts[k]);
        if (parts[k].t != JT_NONE && parts[k].t != JT_INT && parts[k].t != JT_BOOL)
            jj_fail(rt, at, "slice indices must be integers or None, not %s", jj_type_name(parts[k]));
    }
    *s = step.t == JT_NONE ? 1 : step.u.i;
    if (*s == 0) jj_fail(rt, at, "slice step cannot be zero");
    int64_t lo = *s < 0 ? -1 : 0, hi = *s < 0 ? n - 1 : n;
    if (start.t == JT_NONE) *a = *s < 0 ? hi : lo;
    else {
        *a = start.u.i < 0 ? start.u.i + n : start.u.i;
        if (*a < lo) *a = lo;
        if (*a > hi) *a = hi;
    }
    if (stop.t == JT_NONE) *b = *s < 0 ? lo : hi;
    else {
        *b = stop.u.i < 0 ? stop.u.i + n : stop.u.i;
        if (*b < lo) *b = lo;
        if (*b > hi) *b = hi;
    }
}

static jj_val do_slice(jj_rt *rt, const jj_node *at, jj_val obj, jj_val start, jj_val stop, jj_val step) {
    if (obj.t == JT_UNDEF) jj_check_undef(rt, at, obj);
    if (obj.t != JT_LIST && obj.t != JT_TUPLE && obj.t != JT_STR)
        return jj_undef_v(rt, "%s has no element slice(...)", jj_object_desc(obj));
    int64_t n = obj.t == JT_STR ? jj_str_ncp(obj.u.s) : (int64_t)obj.u.l->n, a, b, s;
    slice_indices(rt, at, start, stop, step, n, &a, &b, &s);
    if (obj.t == JT_STR) {
        jj_buf out = {0};
        /* code point offsets */
        size_t *off = NULL;
        if (s != 1 || obj.u.s->ncp != (long)obj.u.s->n) {
            off = jj_alloc(rt, sizeof *off * (size_t)(n + 1));
            size_t i = 0;
            for (int64_t k = 0; k <= n; k++) {
                off[k] = i;
                if (i < obj.u.s->n) jj_utf8_next(obj.u.s->p, obj.u.s->n, &i);
            }
        }
        if (s == 1) {
            if (b > a) {
                size_t x = off ? off[a] : (size_t)a, y = off ? off[b] : (size_t)b;
                jj_buf_put(rt, &out, obj.u.s->p + x, y - x);
            }
        } else {
            for (int64_t k = a; s > 0 ? k < b : k > b; k += s)
                jj_buf_put(rt, &out, obj.u.s->p + off[k], off[k + 1] - off[k]);
        }
        jj_val r = jj_buf_val(rt, &out);
        r.markup = obj.markup;
        return r;
    }
    jj_val r = obj.t == JT_TUPLE ? jj_tuple_v(rt, 0) : jj_list_v(rt, 0);
    for (int64_t k = a; s > 0 ? k < b : k > b; k += s) jj_list_push(rt, r.u.l, obj.u.l->v[k]);
    return r;
}

/* ---- arithmetic -------------------------------------------------------------------------------------- */

static int is_intlike(jj_val v) { return v.t == JT_INT || v.t == JT_BOOL; }
static int is_number(jj_val v) { return is_intlike(v) || v.t == JT_FLOAT; }
static double as_f(jj_val v) { return v.t == JT_FLOAT ? v.u.f : (double)v.u.i; }

static const char *OPSYM[] = {"", "+", "-", "*", "/", "//", "%", "**", "~"};

static _Noreturn void bad_operands(jj_rt *rt, const jj_node *at, int op, jj_val a, jj_val b) {
    if (op == OP_ADD && (a.t == JT_STR || a.t == JT_LIST || a.t == JT_TUPLE))
        jj_fail(rt, at, "can only concatenate %s (not \"%s\") to %s", jj_type_name(a), jj_type_name(b),
                jj_type_name(a));
    jj_fail(rt, at, "unsupported operand type(s) for %s: '%s' and '%s'", OPSYM[op], jj_type_name(a),
            jj_type_name(b));
}

static jj_val repeat(jj_rt *rt, const jj_node *at, jj_val seq, int64_t k) {
    if (k < 0) k = 0;
    if (seq.t == JT_STR) {
        if (k && seq.u.s->n > rt->max_output / (size_t)k)
            jj_fail(rt, at, "string repetition larger than the output limit");
        jj_buf b = {0};
        for (int64_t i = 0; i < k; i++) jj_buf_put(rt, &b, seq.u.s->p, seq.u.s->n);
        jj_val r = jj_buf_val(rt, &b);
        r.markup = seq.markup;
        return r;
    }
    if (k && seq.u.l->n > (size_t)10000000 / (size_t)k) jj_fail(rt, at, "sequence repetition too large");
    jj_val r = seq.t == JT_TUPLE ? jj_tuple_v(rt, 0) : jj_list_v(rt, 0);
    for (int64_t i = 0; i < k; i++)
        for (size_t j = 0; j < seq.u.l->n; j++) jj_list_push(rt, r.u.l, seq.u.l->v[j]);
    return r;
}

static double py_fmod(double x, double y) {
    double m = fmod(x, y);
    if (m != 0) {
        if ((y < 0) != (m < 0)) m += y;
    } else {
        m = copysign(0.0, y);
    }
    return m;
}

static double py_floordiv(double x, double y) {
    double mod = fmod(x, y), div = (x - mod) / y;
    if (mod != 0 && ((y < 0) != (mod < 0))) div -= 1.0;
    if (div != 0) {
        double f = floor(div);
        if (div - f > 0.5) f += 1.0;
        return f;
    }
    return copysign(0.0, x / y);
}

jj_val jj_binop(jj_rt *rt, const jj_node *at, int op, jj_val a, jj_val b) {
    if (op == OP_CONCAT) {
        jj_buf out = {0};
        jj_str_to(rt, &out, a);
        jj_str_to(rt, &out, b);
        return jj_buf_val(rt, &out);
    }
    if (op == OP_MOD && a.t == JT_STR) return jj_percent_format(rt, at, a, b); /* '%s' % Undefined is '' */
    if (a.t == JT_UNDEF) jj_check_undef(rt, at, a);
    if (b.t == JT_UNDEF) jj_check_undef(rt, at, b);
    if (is_number(a) && is_number(b)) {
        int ints = is_intlike(a) && is_intlike(b);
        int64_t x = a.u.i, y = b.u.i, r;
        double fx = as_f(a), fy = as_f(b);
        switch (op) {
        case OP_ADD:
            if (!ints) return jj_float(fx + fy);
            if (__builtin_add_overflow(x, y, &r)) break;
            return jj_int(r);
        case OP_SUB:
            if (!ints) return jj_float(fx - fy);
            if (__builtin_sub_overflow(x, y, &r)) break;
            return jj_int(r);
        case OP_MUL:
            if (!ints) return jj_float(fx * fy);
            if (__builtin_mul_overflow(x, y, &r)) break;
            return jj_int(r);
        case OP_DIV:
            if (fy == 0) jj_fail(rt, at, ints ? "division by zero" : "float division by zero");
            return jj_float(fx / fy);
        case OP_FLOORDIV:
            if (ints) {
                if (y == 0) jj_fail(rt, at, "integer division or modulo by zero");
                if (x == INT64_MIN && y == -1) break;
                int64_t q = x / y;
                if ((x % y != 0) && ((x < 0) != (y < 0))) q--;
                return jj_int(q);
            }
            if (fy == 0) jj_fail(rt, at, "float floor division by zero");
            return jj_float(py_floordiv(fx, fy));
        case OP_MOD:
            if (ints) {
                if (y == 0) jj_fail(rt, at, "integer division or modulo by zero");
                if (y == -1) return jj_int(0);
                int64_t m = x % y;
                if (m != 0 && ((m < 0) != (y < 0))) m += y;
                return jj_int(m);
            }
            if (fy == 0) jj_fail(rt, at, "float modulo");
            return jj_float(py_fmod(fx, fy));
        case OP_POW:
            if (ints && y >= 0) {
                int64_t acc = 1, base = x;
                int64_t e = y;
                while (e > 0) {
                    if (e & 1)
                        if (__builtin_mul_overflow(acc, base, &acc)) goto overflow;
                    e >>= 1;
                    if (e && __builtin_mul_overflow(base, base, &base)) goto overflow;
                }
                return jj_int(acc);
            }
            if (fx == 0 && fy < 0) jj_fail(rt, at, "0.0 cannot be raised to a negative power");
            if (fx < 0 && fy != floor(fy)) jj_fail(rt, at, "a negative number raised to a fractional power is complex (not supported)");
            return jj_float(pow(fx, fy));
        default: break;
        }
    overflow:
        jj_fail(rt, at, "integer overflow in '%s' (capmoe's integers are 64-bit)", OPSYM[op]);
    }
    switch (op) {
    case OP_ADD:
        if (a.t == JT_STR && b.t == JT_STR) {
            jj_buf out = {0};
            jj_val x = a, y = b;
            if (a.markup && !b.markup) y = jj_html_escape(rt, b);
            if (b.markup && !a.markup) x = jj_html_escape(rt, a);
            jj_buf_put(rt, &out, x.u.s->p, x.u.s->n);
            jj_buf_put(rt, &out, y.u.s->p, y.u.s->n);
            if (out.n > rt->max_output) jj_fail(rt, at, "string larger than the output limit");
            jj_val r = jj_buf_val(rt, &out);
            r.markup = a.markup || b.markup;
            return r;
        }
        if ((a.t == JT_LIST && b.t == JT_LIST) || (a.t == JT_TUPLE && b.t == JT_TUPLE)) {
            jj_val r = a.t == JT_TUPLE ? jj_tuple_v(rt, a.u.l->n + b.u.l->n) : jj_list_v(rt, a.u.l->n + b.u.l->n);
            for (size_t i = 0; i < a.u.l->n; i++) r.u.l->v[r.u.l->n++] = a.u.l->v[i];
            for (size_t i = 0; i < b.u.l->n; i++) r.u.l->v[r.u.l->n++] = b.u.l->v[i];
            return r;
        }
        break;
    case OP_MUL:
        if ((a.t == JT_STR || a.t == JT_LIST || a.t == JT_TUPLE) && is_intlike(b)) return repeat(rt, at, a, b.u.i);
        if ((b.t == JT_STR || b.t == JT_LIST || b.t == JT_TUPLE) && is_intlike(a)) return repeat(rt, at, b, a.u.i);
        break;
    case OP_MOD:
        if (a.t == JT_STR) return jj_percent_format(rt, at, a, b);
        break;
    default: break;
    }
    bad_operands(rt, at, op, a, b);
}

static int contains(jj_rt *rt, const jj_node *at, jj_val item, jj_val c) {
    switch (c.t) {
    case JT_STR:
        if (item.t == JT_UNDEF) jj_check_undef(rt, at, item);
        if (item.t != JT_STR)
            jj_fail(rt, at, "'in <string>' requires string as left operand, not %s", jj_type_name(item));
        if (item.u.s->n == 0) return 1;
        return memmem(c.u.s->p, c.u.s->n, item.u.s->p, item.u.s->n) != NULL;
    case JT_LIST:
    case JT_TUPLE:
        for (size_t i = 0; i < c.u.l->n; i++)
            if (jj_eq(c.u.l->v[i], item)) return 1;
        return 0;
    case JT_DICT:
        if (item.t == JT_LIST || item.t == JT_DICT) jj_fail(rt, at, "unhashable type: '%s'", jj_type_name(item));
        return jj_dict_get(c.u.d, item) != NULL;
    case JT_GEN: {
        jj_val x;
        while (jj_gen_next(rt, c.u.g, &x))
            if (jj_eq(x, item)) return 1;
        return 0;
    }
    case JT_UNDEF: return 0;
    default: jj_fail(rt, at, "argument of type '%s' is not iterable", jj_type_name(c));
    }
}

static int compare(jj_rt *rt, const jj_node *at, int op, jj_val a, jj_val b) {
    switch (op) {
    case OP_EQ: return jj_eq(a, b);
    case OP_NE: return !jj_eq(a, b);
    case OP_LT: return jj_lt(rt, at, a, b);
    case OP_GT: return jj_lt(rt, at, b, a);
    case OP_LE: return jj_lt(rt, at, a, b) || jj_eq(a, b);
    case OP_GE: return jj_lt(rt, at, b, a) || jj_eq(a, b);
    case OP_IN: return contains(rt, at, a, b);
    case OP_NOTIN: return !contains(rt, at, a, b);
    }
    return 0;
}

/* ---- calls --------------------------------------------------------------------------------------------- */

static jj_val capture(jj_rt *rt, jj_scope *sc, const jj_node *body) {
    jj_buf buf = {0}, *saved = rt->out;
    rt->out = &buf;
    exec_block(rt, sc, body->items, body->n_items);
    rt->out = saved;
    return jj_buf_val(rt, &buf);
}

static jj_val call_macro(jj_rt *rt, const jj_node *at, jj_macro *m, jj_args *a) {
    const jj_node *def = m->def;
    const char *mname = def->kind == N_MACRO ? def->name : "caller";
    jj_step(rt, at);
    if (++rt->depth > rt->max_depth)
        jj_fail(rt, at, "macro calls nested deeper than %d (recursion?)", rt->max_depth);
    jj_scope *sc = scope_new(rt, m->closure);
    int np = def->n_items;
    jj_val *bound = jj_alloc(rt, sizeof *bound * (size_t)(np + 1));
    char *given = jj_alloc(rt, (size_t)np + 1);
    memset(given, 0, (size_t)np + 1);
    jj_val varargs = jj_tuple_v(rt, 0), kwargs = jj_dict_v(rt), caller;
    int has_caller = 0;
    for (int i = 0; i < a->n_pos; i++) {
        if (i < np) {
            bound[i] = a->pos[i];
            given[i] = 1;
        } else if (def->flags & JJ_VARARGS) {
            jj_list_push(rt, varargs.u.l, a->pos[i]);
        } else {
            jj_fail(rt, at, "macro '%s' takes not more than %d argument(s)", mname, np);
        }
    }
    for (int k = 0; k < a->n_kw; k++) {
        int found = 0;
        for (int i = 0; i < np; i++)
            if (!strcmp(def->items[i]->name, a->kw[k])) {
                if (given[i]) jj_fail(rt, at, "macro '%s' got multiple values for argument '%s'", mname, a->kw[k]);
                bound[i] = a->kwv[k];
                given[i] = 1;
                found = 1;
            }
        if (found) continue;
        if (!strcmp(a->kw[k], "caller") && (def->flags & JJ_CALLER)) {
            caller = a->kwv[k];
            has_caller = 1;
        } else if (def->flags & JJ_KWARGS) {
            jj_dict_set(rt, kwargs.u.d, jj_cstr(rt, a->kw[k]), a->kwv[k]);
        } else {
            jj_fail(rt, at, "macro '%s' takes no keyword argument '%s'", mname, a->kw[k]);
        }
    }
    for (int i = 0; i < np; i++) {
        if (!given[i]) {
            if (def->vals && def->vals[i]) bound[i] = eval(rt, sc, def->vals[i]);
            else bound[i] = jj_undef_v(rt, "parameter '%s' was not provided", def->items[i]->name);
        }
        scope_set(rt, sc, def->items[i]->name, bound[i]);
    }
    if (def->flags & JJ_VARARGS) scope_set(rt, sc, jj_lookup_name(rt->t, "varargs"), varargs);
    if (def->flags & JJ_KWARGS) scope_set(rt, sc, jj_lookup_name(rt->t, "kwargs"), kwargs);
    if ((def->flags & JJ_CALLER) && def->kind == N_MACRO)
        scope_set(rt, sc, jj_lookup_name(rt->t, "caller"),
                  has_caller ? caller : jj_undef_v(rt, "No caller defined"));
    int saved_loops = rt->loop_depth;
    rt->loop_depth = 0;
    jj_val r = capture(rt, sc, def->d);
    rt->loop_depth = saved_loops;
    rt->depth--;
    return r;
}

static jj_val call_global(jj_rt *rt, const jj_node *at, int id, jj_args *a) {
    switch (id) {
    case JF_RANGE: {
        if (a->n_kw) jj_fail(rt, at, "range() takes no keyword arguments");
        if (a->n_pos < 1 || a->n_pos > 3) jj_fail(rt, at, "range expected 1 to 3 arguments, got %d", a->n_pos);
        int64_t v[3] = {0, 0, 1};
        for (int i = 0; i < a->n_pos; i++) {
            if (a->pos[i].t == JT_UNDEF) jj_check_undef(rt, at, a->pos[i]);
            if (!is_intlike(a->pos[i]))
                jj_fail(rt, at, "'%s' object cannot be interpreted as an integer", jj_type_name(a->pos[i]));
        }
        if (a->n_pos == 1) v[1] = a->pos[0].u.i;
        else {
            v[0] = a->pos[0].u.i;
            v[1] = a->pos[1].u.i;
            if (a->n_pos == 3) v[2] = a->pos[2].u.i;
        }
        if (v[2] == 0) jj_fail(rt, at, "range() arg 3 must not be zero");
        int64_t cnt = 0;
        if (v[2] > 0 && v[1] > v[0]) cnt = (v[1] - v[0] + v[2] - 1) / v[2];
        if (v[2] < 0 && v[1] < v[0]) cnt = (v[0] - v[1] - v[2] - 1) / -v[2];
        if (cnt > 100000)
            jj_fail(rt, at, "Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
        jj_val l = jj_list_v(rt, (size_t)cnt);
        for (int64_t i = 0; i < cnt; i++) l.u.l->v[l.u.l->n++] = jj_int(v[0] + i * v[2]);
        return l;
    }
    case JF_DICT:
    case JF_NAMESPACE: {
        jj_val d = jj_dict_v(rt);
        if (a->n_pos > 1) jj_fail(rt, at, "%s expected at most 1 argument, got %d", id == JF_DICT ? "dict" : "namespace", a->n_pos);
        if (a->n_pos == 1) {
            jj_val src = a->pos[0];
            if (src.t == JT_DICT || src.t == JT_NS) {
                for (size_t i = 0; i < src.u.d->n; i++) jj_dict_set(rt, d.u.d, src.u.d->k[i], src.u.d->v[i]);
            } else {
                jj_list *l = jj_iterate(rt, at, src);
                for (size_t i = 0; i < l->n; i++) {
                    jj_list *kv = jj_iterate(rt, at, l->v[i]);
                    if (kv->n != 2) jj_fail(rt, at, "dictionary update sequence element #%zu has length %zu; 2 is required", i, kv->n);
                    jj_dict_set(rt, d.u.d, kv->v[0], kv->v[1]);
                }
            }
        }
        for (int k = 0; k < a->n_kw; k++) jj_dict_set(rt, d.u.d, jj_cstr(rt, a->kw[k]), a->kwv[k]);
        if (id == JF_NAMESPACE) d.t = JT_NS;
        return d;
    }
    case JF_CYCLER: {
        if (a->n_pos == 0) jj_fail(rt, at, "at least one item has to be provided to cycler()");
        jj_val c = jj_none();
        c.t = JT_CYCLER;
        c.u.cy = jj_alloc(rt, sizeof *c.u.cy);
        c.u.cy->items = jj_list_v(rt, (size_t)a->n_pos).u.l;
        for (int i = 0; i < a->n_pos; i++) c.u.cy->items->v[c.u.cy->items->n++] = a->pos[i];
        c.u.cy->pos = 0;
        return c;
    }
    case JF_JOINER: {
        static const char *const names[] = {"sep"};
        jj_val sep;
        jj_bind(rt, at, "joiner()", a, names, 1, &sep);
        jj_val j = jj_none();
        j.t = JT_JOINER;
        j.u.jo = jj_alloc(rt, sizeof *j.u.jo);
        j.u.jo->sep = JJ_MISSING(sep) ? jj_str_new(rt, ", ", 2) : jj_to_str(rt, sep);
        j.u.jo->used = 0;
        return j;
    }
    case JF_RAISE: {
        static const char *const names[] = {"message"};
        jj_val msg;
        jj_bind(rt, at, "raise_exception()", a, names, 1, &msg);
        if (JJ_MISSING(msg)) jj_fail(rt, at, "raise_exception() missing 1 required positional argument: 'message'");
        jj_str *s = jj_to_str(rt, msg);
        jj_fail(rt, at, "raise_exception: %s", s->p);
    }
    case JF_STRFTIME: {
        static const char *const names[] = {"format"};
        jj_val fmt;
        jj_bind(rt, at, "strftime_now()", a, names, 1, &fmt);
        if (fmt.t != JT_STR) jj_fail(rt, at, "strftime_now() argument must be str, not %s", jj_type_name(fmt));
        time_t now = rt->now ? (time_t)rt->now : time(NULL);
        struct tm tm;
        localtime_r(&now, &tm);
        char out[512];
        size_t k = fmt.u.s->n ? strftime(out, sizeof out, fmt.u.s->p, &tm) : 0;
        if (fmt.u.s->n && k == 0) jj_fail(rt, at, "strftime_now(): the formatted date is empty or too long");
        return jj_str_v(rt, out, k);
    }
    }
    jj_fail(rt, at, "unknown function");
}

jj_val jj_call_value(jj_rt *rt, const jj_node *at, jj_val fn, jj_args *a) {
    switch (fn.t) {
    case JT_MACRO: return call_macro(rt, at, fn.u.m, a);
    case JT_FUNC: jj_step(rt, at); return call_global(rt, at, (int)fn.u.i, a);
    case JT_METHOD: jj_step(rt, at); return jj_call_method(rt, at, fn.u.me, a);
    case JT_JOINER:
        if (a->n_pos || a->n_kw) jj_fail(rt, at, "joiner takes no arguments");
        if (!fn.u.jo->used) {
            fn.u.jo->used = 1;
            return jj_str_v(rt, "", 0);
        }
        return (jj_val){.t = JT_STR, .u.s = fn.u.jo->sep};
    case JT_UNDEF: jj_check_undef(rt, at, fn); break;
    default: break;
    }
    jj_fail(rt, at, "'%s' object is not callable", jj_type_name(fn));
}

static void eval_args(jj_rt *rt, jj_scope *sc, const jj_node *n, jj_args *a, int extra_kw) {
    a->n_pos = n->n_items;
    a->pos = jj_alloc(rt, sizeof *a->pos * (size_t)(n->n_items + 1));
    for (int i = 0; i < n->n_items; i++) a->pos[i] = eval(rt, sc, n->items[i]);
    a->n_kw = n->n_kw;
    a->kw = jj_alloc(rt, sizeof *a->kw * (size_t)(n->n_kw + extra_kw + 1));
    a->kwv = jj_alloc(rt, sizeof *a->kwv * (size_t)(n->n_kw + extra_kw + 1));
    for (int i = 0; i < n->n_kw; i++) {
        a->kw[i] = n->kw[i];
        a->kwv[i] = eval(rt, sc, n->vals[i]);
    }
}

/* ---- expressions ------------------------------------------------------------------------------------------ */

static jj_val eval(jj_rt *rt, jj_scope *sc, const jj_node *n) {
    const jj_node *saved_at = rt->at;
    rt->at = n;
    jj_val r;
    switch (n->kind) {
    case N_CONST: r = n->cval; break;
    case N_NAME: r = lookup(rt, sc, n->name); break;
    case N_GETATTR: r = jj_getattr(rt, n, eval(rt, sc, n->a), n->name); break;
    case N_GETITEM: {
        jj_val obj = eval(rt, sc, n->a);
        r = jj_getitem(rt, n, obj, eval(rt, sc, n->b));
        break;
    }
    case N_SLICE: {
        /* a slice among several subscripts ('abc'[1:, 0]) has no object of
         * its own: Python would index with a tuple holding a slice object,
         * which no str, list or dict accepts */
        if (!n->a) jj_fail(rt, n, "a slice inside a tuple subscript is not supported");
        jj_val obj = eval(rt, sc, n->a);
        jj_val parts[3];
        const jj_node *pn[3] = {n->b, n->c, n->d};
        for (int k = 0; k < 3; k++) parts[k] = pn[k] ? eval(rt, sc, pn[k]) : jj_none();
        r = do_slice(rt, n, obj, parts[0], parts[1], parts[2]);
        break;
    }
    case N_CALL: {
        jj_val fn = eval(rt, sc, n->a);
        jj_args a;
        eval_args(rt, sc, n, &a, 0);
        rt->at = n;
        r = jj_call_value(rt, n, fn, &a);
        break;
    }
    case N_FILTER: {
        jj_val in = n->a ? eval(rt, sc, n->a) : rt->filter_in;
        jj_args a;
        eval_args(rt, sc, n, &a, 0);
        rt->at = n;
        jj_step(rt, n);
        if (n->fid < 0) jj_fail(rt, n, "No filter named '%s' found.", n->name);
        r = jj_apply_filter(rt, n, n->fid, in, &a);
        break;
    }
    case N_TEST: {
        jj_val in = eval(rt, sc, n->a);
        jj_args a;
        eval_args(rt, sc, n, &a, 0);
        rt->at = n;
        if (n->fid < 0) jj_fail(rt, n, "No test named '%s' found.", n->name);
        int t = jj_apply_test(rt, n, n->fid, in, &a);
        r = jj_bool((n->flags & JJ_NEGATED) ? !t : t);
        break;
    }
    case N_BINOP: {
        jj_val x = eval(rt, sc, n->a);
        jj_val y = eval(rt, sc, n->b);
        rt->at = n;
        r = jj_binop(rt, n, n->op, x, y);
        break;
    }
    case N_UNARY: {
        jj_val x = eval(rt, sc, n->a);
        rt->at = n;
        if (n->op == OP_NOT) {
            r = jj_bool(!jj_truthy(rt, x));
        } else {
            if (x.t == JT_UNDEF) jj_check_undef(rt, n, x);
            if (!is_number(x))
                jj_fail(rt, n, "bad operand type for unary %s: '%s'", n->op == OP_NEG ? "-" : "+", jj_type_name(x));
            if (x.t == JT_FLOAT) r = jj_float(n->op == OP_NEG ? -x.u.f : x.u.f);
            else if (n->op == OP_NEG && x.u.i == INT64_MIN) jj_fail(rt, n, "integer overflow in unary '-'");
            else r = jj_int(n->op == OP_NEG ? -x.u.i : x.u.i);
        }
        break;
    }
    case N_AND: {
        jj_val x = eval(rt, sc, n->a);
        r = jj_truthy(rt, x) ? eval(rt, sc, n->b) : x;
        break;
    }
    case N_OR: {
        jj_val x = eval(rt, sc, n->a);
        r = jj_truthy(rt, x) ? x : eval(rt, sc, n->b);
        break;
    }
    case N_COMPARE: {
        jj_val left = eval(rt, sc, n->a);
        r = jj_bool(1);
        for (int i = 0; i < n->n_items; i++) {
            jj_val right = eval(rt, sc, n->items[i]);
            rt->at = n;
            if (!compare(rt, n, n->ops[i], left, right)) {
                r = jj_bool(0);
                break;
            }
            left = right;
        }
        break;
    }
    case N_COND:
        if (jj_truthy(rt, eval(rt, sc, n->a))) r = eval(rt, sc, n->b);
        else if (n->c) r = eval(rt, sc, n->c);
        else r = jj_undef_v(rt, "the inline if-expression on line %d evaluated to false and no else section was defined.", n->line);
        break;
    case N_LIST:
    case N_TUPLE: {
        r = n->kind == N_LIST ? jj_list_v(rt, (size_t)n->n_items) : jj_tuple_v(rt, (size_t)n->n_items);
        for (int i = 0; i < n->n_items; i++) r.u.l->v[r.u.l->n++] = eval(rt, sc, n->items[i]);
        break;
    }
    case N_DICT: {
        r = jj_dict_v(rt);
        for (int i = 0; i < n->n_items; i++) {
            jj_val k = eval(rt, sc, n->items[i]);
            jj_val v = eval(rt, sc, n->vals[i]);
            if (k.t == JT_LIST || k.t == JT_DICT || k.t == JT_NS)
                jj_fail(rt, n->items[i], "unhashable type: '%s'", jj_type_name(k));
            jj_dict_set(rt, r.u.d, k, v);
        }
        break;
    }
    default: jj_fail(rt, n, "internal error: not an expression");
    }
    rt->at = saved_at;
    return r;
}

/* ---- statements ------------------------------------------------------------------------------------------- */

static void assign(jj_rt *rt, jj_scope *sc, const jj_node *target, jj_val v) {
    if (target->kind == N_NAME) {
        scope_set(rt, sc, target->name, v);
        return;
    }
    if (target->kind == N_NSREF) {
        jj_val ns = lookup(rt, sc, target->name);
        if (ns.t != JT_NS) jj_fail(rt, target, "cannot assign attribute on non-namespace object");
        jj_dict_set(rt, ns.u.d, jj_cstr(rt, target->attr), v);
        return;
    }
    /* tuple unpacking */
    jj_list *items = jj_iterate(rt, target, v);
    if ((int)items->n != target->n_items)
        jj_fail(rt, target, (int)items->n > target->n_items ? "too many values to unpack (expected %d)"
                                                            : "not enough values to unpack (expected %d, got fewer)",
                target->n_items);
    for (int i = 0; i < target->n_items; i++) assign(rt, sc, target->items[i], items->v[i]);
}

static jj_val apply_chain(jj_rt *rt, jj_scope *sc, const jj_node *chain, jj_val in) {
    if (!chain) return in;
    jj_val saved = rt->filter_in;
    rt->filter_in = in;
    jj_val r = eval(rt, sc, chain);
    rt->filter_in = saved;
    return r;
}

static void exec_for(jj_rt *rt, jj_scope *sc, const jj_node *n) {
    jj_val it = eval(rt, sc, n->b);
    rt->at = n;
    jj_list *items = jj_iterate(rt, n->b, it);
    if (n->c) { /* {% for x in xs if cond %}: filter first (no loop variable yet) */
        jj_list *kept = jj_list_v(rt, items->n).u.l;
        for (size_t i = 0; i < items->n; i++) {
            jj_step(rt, n);
            jj_scope *fs = scope_new(rt, sc);
            assign(rt, fs, n->a, items->v[i]);
            if (jj_truthy(rt, eval(rt, fs, n->c))) kept->v[kept->n++] = items->v[i];
        }
        items = kept;
    }
    if (items->n == 0) {
        if (n->d) exec_block(rt, scope_new(rt, sc), n->d->items, n->d->n_items);
        return;
    }
    jj_val lv = jj_none();
    lv.t = JT_LOOP;
    lv.u.lp = jj_alloc(rt, sizeof *lv.u.lp);
    memset(lv.u.lp, 0, sizeof *lv.u.lp);
    lv.u.lp->items = items->v;
    lv.u.lp->n = items->n;
    lv.u.lp->depth = 1;
    const char *loop_name = jj_lookup_name(rt->t, "loop");
    rt->loop_depth++;
    for (size_t i = 0; i < items->n; i++) {
        jj_step(rt, n);
        lv.u.lp->i = i;
        jj_scope *is = scope_new(rt, sc);
        assign(rt, is, n->a, items->v[i]);
        if (loop_name) scope_set(rt, is, loop_name, lv);
        exec_block(rt, is, n->items, n->n_items);
        if (rt->loop_ctl == N_BREAK) {
            rt->loop_ctl = 0;
            break;
        }
        rt->loop_ctl = 0;
    }
    rt->loop_depth--;
}

static void exec_stmt(jj_rt *rt, jj_scope *sc, const jj_node *n) {
    rt->at = n;
    switch (n->kind) {
    case N_OUTPUT:
        for (int i = 0; i < n->n_items; i++) {
            const jj_node *x = n->items[i];
            if (x->kind == N_DATA) {
                emit(rt, x->cval.u.s->p, x->cval.u.s->n);
                continue;
            }
            jj_val v = eval(rt, sc, x);
            rt->at = x;
            if (v.t == JT_STR) {
                emit(rt, v.u.s->p, v.u.s->n);
            } else if (v.t != JT_UNDEF) {
                jj_buf b = {0};
                jj_str_to(rt, &b, v);
                emit(rt, b.p ? b.p : "", b.n);
            }
        }
        break;
    case N_IF: {
        const jj_node *b = n;
        while (b && b->kind == N_IF) {
            if (jj_truthy(rt, eval(rt, sc, b->a))) {
                exec_block(rt, sc, b->items, b->n_items);
                return;
            }
            b = b->b;
        }
        if (b) exec_block(rt, sc, b->items, b->n_items);
        break;
    }
    case N_FOR: exec_for(rt, sc, n); break;
    case N_SET: assign(rt, sc, n->a, eval(rt, sc, n->b)); break;
    case N_SETBLOCK: {
        jj_val body = capture(rt, scope_new(rt, sc), n->d);
        assign(rt, sc, n->a, apply_chain(rt, sc, n->c, body));
        break;
    }
    case N_MACRO: {
        jj_val m = jj_none();
        m.t = JT_MACRO;
        m.u.m = jj_alloc(rt, sizeof *m.u.m);
        m.u.m->def = n;
        m.u.m->closure = sc;
        scope_set(rt, sc, n->name, m);
        break;
    }
    case N_CALLBLOCK: {
        const jj_node *call = n->a;
        jj_val fn = eval(rt, sc, call->a);
        jj_args a;
        eval_args(rt, sc, call, &a, 1);
        jj_val caller = jj_none();
        caller.t = JT_MACRO;
        caller.u.m = jj_alloc(rt, sizeof *caller.u.m);
        caller.u.m->def = n;
        caller.u.m->closure = sc;
        a.kw[a.n_kw] = "caller";
        a.kwv[a.n_kw++] = caller;
        rt->at = n;
        jj_val r = jj_call_value(rt, call, fn, &a);
        jj_buf b = {0};
        jj_str_to(rt, &b, r);
        emit(rt, b.p ? b.p : "", b.n);
        break;
    }
    case N_FILTERBLOCK: {
        jj_val body = capture(rt, scope_new(rt, sc), n->d);
        jj_val r = apply_chain(rt, sc, n->c, body);
        jj_buf b = {0};
        jj_str_to(rt, &b, r);
        emit(rt, b.p ? b.p : "", b.n);
        break;
    }
    case N_WITH: {
        jj_scope *ws = scope_new(rt, sc);
        for (int i = 0; i < n->n_items; i++) assign(rt, ws, n->items[i], eval(rt, sc, n->vals[i]));
        exec_block(rt, ws, n->d->items, n->d->n_items);
        break;
    }
    case N_GENERATION: exec_block(rt, scope_new(rt, sc), n->d->items, n->d->n_items); break;
    case N_BREAK:
    case N_CONTINUE:
        if (!rt->loop_depth) jj_fail(rt, n, "'%s' outside of a for loop", n->kind == N_BREAK ? "break" : "continue");
        rt->loop_ctl = n->kind;
        break;
    default: jj_fail(rt, n, "internal error: not a statement");
    }
}

static void exec_block(jj_rt *rt, jj_scope *sc, jj_node *const *stmts, int n) {
    for (int i = 0; i < n && !rt->loop_ctl; i++) exec_stmt(rt, sc, stmts[i]);
}

void jj_exec(jj_rt *rt) {
    jj_scope *root = scope_new(rt, NULL);
    exec_block(rt, root, rt->t->root->items, rt->t->root->n_items);
}
