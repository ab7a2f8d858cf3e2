#!/usr/bin/env python3
"""check_dashboard.py DASHBOARD.json METRICS.txt DATASOURCES.yml

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
    latency percentiles, running/waiting requests, tokens/s).
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
    "capmoe_generation_tokens_total",
]
TARGET_LABELS = {"instance", "job"}  # added by Prometheus when it scrapes
NAME_RE = re.compile(r"\bcapmoe_[a-zA-Z0-9_]+")
SEL_RE = re.compile(r"\b(capmoe_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
LABEL_RE = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
BY_RE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


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
    if len(argv) != 4:
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
    for e in errors:
        print("dashboard: " + e)
    if errors:
        return 1
    print("dashboard: ok: %d panels, %d expressions, %d capmoe metric families checked against /metrics"
          % (len(panels), len(exprs), len(used)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
