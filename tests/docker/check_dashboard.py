#!/usr/bin/env python3
"""check_dashboard.py DASHBOARD.json METRICS.txt DATASOURCES.yml [DEFAULT_METRICS.txt]

Checks a Grafana dashboard against a live Prometheus exposition of
capmoe-server (used by tests/t_docker.sh):
  - the JSON parses, panel ids are unique, panels do not overlap on the grid;
  - every panel and target uses the datasource uid provisioned in
    DATASOURCES.yml;
  - every capmoe_* name in an expression (targets and template queries) is a
    family of METRICS.txt ("# TYPE" line), or NAME_bucket/_sum/_count of a
    histogram family; a histogram family is never used bare;
  - every label in a selector ({label=...}) or a "by (...)" clause is present on
    a sample of the metrics of that expression (Prometheus' own target labels
    instance and job, and le of histogram buckets, excepted as noted);
  - the panels the deployment docs promise are there (expert load, load
    imbalance, straggler ratio, dropped/rerouted/routed pairs, capacity factor,
    latency percentiles, running/waiting requests, tokens/s, finished
    sequences, tokens per sequence, process CPU / memory / descriptors, build);
  - with DEFAULT_METRICS (a scrape of a server in the default configuration
    after some traffic): a panel none of whose queries can select a sample
    with data there (every histogram it reads has a zero _count for its
    selectors, or no sample matches them) must say why in
    fieldConfig.defaults.noValue, instead of Grafana's bare "No data".
Exit 0 when all hold; otherwise prints each problem and exits 1. Standard
library only.
"""
import json
import re
import sys

REQUIRED = [
    "capmoe_expert_tokens_total", "capmoe_moe_load_imbalance", "capmoe_moe_straggler_ratio",
    "capmoe_moe_dropped_pairs_total", "capmoe_moe_rerouted_pairs_total",
    "capmoe_moe_routed_pairs_total", "capmoe_moe_capacity_factor",
    "capmoe_time_to_first_token_seconds", "capmoe_inter_token_latency_seconds",
    "capmoe_e2e_request_latency_seconds", "capmoe_requests_running", "capmoe_requests_waiting",
    "capmoe_generation_tokens_total", "capmoe_request_success_total",
    "capmoe_request_prompt_tokens", "capmoe_request_generation_tokens",
    "capmoe_moe_dropped_mass_ratio", "capmoe_build_info", "process_cpu_seconds_total",
    "process_resident_memory_bytes", "process_open_fds", "process_max_fds",
    "process_start_time_seconds",
]
TARGET_LABELS = {"instance", "job"}  # added by Prometheus when it scrapes
NAME_RE = re.compile(r"\b(?:capmoe|process)_[a-zA-Z0-9_]+")
SEL_RE = re.compile(r"\b((?:capmoe|process)_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCH_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
LABEL_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
BY_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


def parse_samples(text):
    """[(name, {label: value}, value)] of an exposition"""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)", line)
        if not m:
            continue
        labs = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        try:
            out.append((m.group(1), labs, float(m.group(4))))
        except ValueError:
            pass
    return out


def has_data(expr, samples, types):
    """Whether some sample the expression reads carries data: a matching
    sample with a non-zero value for counters and histogram _count, any
    matching sample for gauges and info metrics."""
    for name, body in re.findall(r"\b((?:capmoe|process)_[a-zA-Z0-9_]+)\s*(?:\{([^}]*)\})?", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        hist = types.get(base) == "histogram" and base != name
        want = base + "_count" if hist else name
        matchers = [(k, op, v) for k, op, v in MATCH_RE.findall(body or "")
                    if k not in TARGET_LABELS and k != "le"]
        for sname, labs, value in samples:
            if sname != want:
                continue
            ok = True
            for k, op, v in matchers:
                have = labs.get(k, "")
                if op == "=": ok &= have == v
                elif op == "!=": ok &= have != v
                elif op == "=~": ok &= re.fullmatch(v, have) is not None
                else: ok &= re.fullmatch(v, have) is None
            if not ok:
                continue
            if types.get(base) == "gauge" or value != 0:
                return True
    return False


def parse_exposition(text):
    """{family: type}, {sample name: set of label names}"""
    types, labels = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s", line)
        if not m:
            continue
        names = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        labels.setdefault(m.group(1), set()).update(names)
    return types, labels


def expressions(dash):
    out = []  # (where, expr)
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []) or []:
                if "expr" in t:
                    out.append(("panel %r target %s" % (p.get("title"), t.get("refId")), t["expr"]))
            walk(p.get("panels", []) or [])
    walk(dash.get("panels", []))
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and "capmoe_" in q:
            out.append(("template variable %r" % v.get("name"), q))
    return out


def main(argv):
    if len(argv) not in (4, 5):
        sys.stderr.write(__doc__)
        return 2
    errors = []
    try:
        with open(argv[1], encoding="utf-8") as fh:
            dash = json.load(fh)
    except (OSError, ValueError) as e:
        print("dashboard %s: %s" % (argv[1], e))
        return 1
    with open(argv[2], encoding="utf-8") as fh:
        types, labels = parse_exposition(fh.read())
    if not types:
        print("metrics %s: no '# TYPE' lines: not an exposition" % argv[2])
        return 1
    with open(argv[3], encoding="utf-8") as fh:
        uids = re.findall(r"^\s*uid:\s*['\"]?([A-Za-z0-9_.-]+)", fh.read(), re.M)
    if len(uids) != 1:
        print("datasources %s: expected one uid, found %r" % (argv[3], uids))
        return 1
    uid = uids[0]

    # panels: ids, datasource, grid
    panels, ids, cells = [], set(), {}
    for p in dash.get("panels", []):
        panels.append(p)
        panels.extend(p.get("panels", []) or [])
    if not panels:
        errors.append("no panels")
    for p in panels:
        pid = p.get("id")
        if pid in ids:
            errors.append("panel id %r used twice" % pid)
        ids.add(pid)
        if p.get("type") != "row":
            ds = p.get("datasource") or {}
            if ds.get("uid") != uid:
                errors.append("panel %r: datasource uid %r, provisioned %r" % (p.get("title"), ds.get("uid"), uid))
            if not p.get("targets"):
                errors.append("panel %r has no targets" % p.get("title"))
            for t in p.get("targets", []):
                tds = t.get("datasource") or ds
                if tds.get("uid") != uid:
                    errors.append("panel %r target %s: datasource uid %r" % (p.get("title"), t.get("refId"), tds.get("uid")))
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] + g["w"] > 24:
            errors.append("panel %r: bad gridPos %r" % (p.get("title"), g))
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    errors.append("panels %r and %r overlap at x=%d y=%d" % (cells[(x, y)], p.get("title"), x, y))
                    break
                cells[(x, y)] = p.get("title")
            else:
                continue
            break

    # metric names and labels
    used = set()
    exprs = expressions(dash)
    for where, expr in exprs:
        metrics_here = []
        for tok in NAME_RE.findall(expr):
            base = re.sub(r"_(bucket|sum|count)$", "", tok)
            if tok in types:
                if types[tok] == "histogram":
                    errors.append("%s: histogram %s used without _bucket/_sum/_count" % (where, tok))
                used.add(tok)
            elif base != tok and types.get(base) == "histogram":
                used.add(base)
            else:
                errors.append("%s: %s is not exported by /metrics" % (where, tok))
                continue
            metrics_here.append(tok)
        for name, body in SEL_RE.findall(expr):
            for lab in LABEL_RE.findall(body):
                if lab in TARGET_LABELS:
                    continue
                if lab not in labels.get(name, set()):
                    errors.append("%s: label %s is on no sample of %s" % (where, lab, name))
        for group in BY_RE.findall(expr):
            for lab in [x.strip() for x in group.split(",") if x.strip()]:
                if lab in TARGET_LABELS:
                    continue
                if not any(lab in labels.get(m, set()) for m in metrics_here):
                    errors.append("%s: 'by (%s)' label %s is on none of %s" % (where, group, lab, metrics_here))
    for r in REQUIRED:
        if r not in used:
            errors.append("no panel uses %s" % r)

    # panels that stay empty under the default configuration say why
    empty = []
    if len(argv) == 5:
        with open(argv[4], encoding="utf-8") as fh:
            dtext = fh.read()
        dtypes, _ = parse_exposition(dtext)
        samples = parse_samples(dtext)
        for p in panels:
            exprs_p = [t["expr"] for t in p.get("targets", []) or [] if "expr" in t]
            if not exprs_p or any(has_data(e, samples, dtypes) for e in exprs_p):
                continue
            empty.append(p.get("title"))
            nv = ((p.get("fieldConfig") or {}).get("defaults") or {}).get("noValue")
            if not isinstance(nv, str) or len(nv) < 20:
                errors.append("panel %r has no data under the default configuration and no "
                              "fieldConfig.defaults.noValue saying why" % p.get("title"))
    for e in errors:
        print("dashboard: " + e)
    if errors:
        return 1
    print("dashboard: ok: %d panels, %d expressions, %d metric families checked against /metrics%s"
          % (len(panels), len(exprs), len(used),
             "; empty under the default configuration, each saying why: %s" % "; ".join(map(repr, empty))
             if len(argv) == 5 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
