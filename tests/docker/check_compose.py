#!/usr/bin/python3
"""check_compose.py NORMALIZED.yml REPO_ROOT

Checks the deployment files against each other (used by tests/t_docker.sh).
NORMALIZED.yml is the output of `docker-compose -f docker/docker-compose.yml
config` (the official client's validated, normalized form: absolute paths,
long port syntax). Needs PyYAML (Debian python3-yaml, a dependency of
docker-compose). Checks:
  - services capmoe, prometheus, grafana; capmoe is built from the repository
    root with docker/Dockerfile;
  - capmoe's healthcheck runs the same exec-form command as the Dockerfile's
    HEALTHCHECK, and includes --healthcheck;
  - capmoe publishes the port the server listens on (config/capmoe.json
    "port"), which is the Dockerfile's EXPOSE and the port Prometheus scrapes
    (docker/prometheus.yml target capmoe:PORT, by service name);
  - stop_grace_period exceeds the server's drain time (grace_period_s);
  - prometheus mounts docker/prometheus.yml read-only as its config and waits
    for capmoe to be healthy (depends_on condition service_healthy);
  - grafana mounts docker/grafana/provisioning and the dashboards folder, at
    the path the dashboard provider of the provisioning reads.
Prints each problem and exits 1, or exits 0.
"""
import json
import os
import re
import sys

import yaml


def duration_s(v):
    if isinstance(v, (int, float)):
        return float(v)
    total, rest = 0.0, str(v).strip()
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", rest):
        total += float(num) * {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}[unit]
    if not re.fullmatch(r"((\d+(\.\d+)?)(us|ms|s|m|h))+", rest):
        raise ValueError("bad duration %r" % v)
    return total


def volume(v):
    """(source, target, read_only) of a short-syntax string or long-syntax dict."""
    if isinstance(v, dict):
        return v.get("source"), v.get("target"), bool(v.get("read_only"))
    parts = v.split(":")
    ro = len(parts) > 2 and "ro" in parts[2].split(",")
    return parts[0], parts[1] if len(parts) > 1 else parts[0], ro


def ports(svc):
    out = []
    for p in svc.get("ports", []) or []:
        if isinstance(p, dict):
            out.append(int(p["target"]))
        else:
            out.append(int(str(p).split(":")[-1].split("/")[0]))
    return out


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    root = os.path.realpath(argv[2])
    errs = []
    with open(argv[1], encoding="utf-8") as fh:
        comp = yaml.safe_load(fh)
    with open(os.path.join(root, "config/capmoe.json"), encoding="utf-8") as fh:
        scfg = json.load(fh)
    with open(os.path.join(root, "docker/Dockerfile"), encoding="utf-8") as fh:
        dockerfile = fh.read()
    with open(os.path.join(root, "docker/prometheus.yml"), encoding="utf-8") as fh:
        prom = yaml.safe_load(fh)
    svcs = comp.get("services") or {}
    for s in ("capmoe", "prometheus", "grafana"):
        if s not in svcs:
            errs.append("no service %s" % s)
    if errs:
        print("\n".join("compose: " + e for e in errs))
        return 1
    cap, pr, gr = svcs["capmoe"], svcs["prometheus"], svcs["grafana"]
    port = int(scfg.get("port", 8080))

    b = cap.get("build") or {}
    if os.path.realpath(str(b.get("context", ""))) != root:
        errs.append("capmoe build context %r is not the repository root %s" % (b.get("context"), root))
    if b.get("dockerfile") != "docker/Dockerfile":
        errs.append("capmoe dockerfile %r, expected docker/Dockerfile" % b.get("dockerfile"))

    # Dockerfile: last HEALTHCHECK (only the last counts), EXPOSE
    joined = re.sub(r"\\\n", " ", dockerfile)
    hcs = re.findall(r"^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$", joined, re.M)
    if not hcs:
        errs.append("Dockerfile: no exec-form HEALTHCHECK")
        df_hc = None
    else:
        df_hc = json.loads(hcs[-1])
    test = (cap.get("healthcheck") or {}).get("test")
    if not isinstance(test, list) or test[:1] != ["CMD"]:
        errs.append("capmoe healthcheck test %r is not an exec-form [\"CMD\", ...]" % (test,))
    else:
        if "--healthcheck" not in test:
            errs.append("capmoe healthcheck does not run --healthcheck: %r" % (test,))
        if df_hc is not None and test[1:] != df_hc:
            errs.append("compose healthcheck %r differs from the Dockerfile's %r" % (test[1:], df_hc))
    exposed = [int(x) for x in re.findall(r"^EXPOSE\s+(\d+)", dockerfile, re.M)]
    if exposed != [port]:
        errs.append("Dockerfile EXPOSE %r, server port %d" % (exposed, port))
    if port not in ports(cap):
        errs.append("capmoe does not publish container port %d (ports %r)" % (port, ports(cap)))

    try:
        sgp = duration_s(cap.get("stop_grace_period", "10s"))
        drain = float(scfg.get("grace_period_s", 30))
        if sgp <= drain:
            errs.append("stop_grace_period %ss is not above the server's grace_period_s %ss" % (sgp, drain))
    except ValueError as e:
        errs.append("capmoe stop_grace_period: %s" % e)

    if not str(pr.get("image", "")).startswith("prom/prometheus"):
        errs.append("prometheus image %r" % pr.get("image"))
    cond = ((pr.get("depends_on") or {}).get("capmoe") or {}).get("condition")
    if cond != "service_healthy":
        errs.append("prometheus depends_on capmoe condition %r, expected service_healthy" % cond)
    prom_src = os.path.join(root, "docker/prometheus.yml")
    want = [(s, t, ro) for s, t, ro in map(volume, pr.get("volumes", []) or [])
            if t == "/etc/prometheus/prometheus.yml"]
    if not want or os.path.realpath(want[0][0]) != prom_src or not want[0][2]:
        errs.append("prometheus does not mount docker/prometheus.yml read-only at "
                    "/etc/prometheus/prometheus.yml: %r" % (pr.get("volumes"),))
    targets = [t for sc in prom.get("scrape_configs", []) for stc in sc.get("static_configs", [])
               for t in stc.get("targets", [])]
    if "capmoe:%d" % port not in targets:
        errs.append("docker/prometheus.yml scrapes %r, not the capmoe service at capmoe:%d" % (targets, port))

    gv = {t: (s, ro) for s, t, ro in map(volume, gr.get("volumes", []) or [])}
    prov = gv.get("/etc/grafana/provisioning")
    if not prov or os.path.realpath(prov[0]) != os.path.join(root, "docker/grafana/provisioning"):
        errs.append("grafana does not mount docker/grafana/provisioning at /etc/grafana/provisioning")
    dash_dir = os.path.join(root, "docker/grafana/provisioning/dashboards")
    paths = []
    for f in sorted(os.listdir(dash_dir)) if os.path.isdir(dash_dir) else []:
        if f.endswith((".yml", ".yaml")):
            with open(os.path.join(dash_dir, f), encoding="utf-8") as fh:
                for p in (yaml.safe_load(fh) or {}).get("providers", []):
                    paths.append((p.get("options") or {}).get("path"))
    if not paths:
        errs.append("no dashboard provider in docker/grafana/provisioning/dashboards")
    for p in paths:
        m = gv.get(p)
        if not m:
            errs.append("dashboard provider path %s is not a grafana volume target" % p)
        elif not os.path.isfile(os.path.join(m[0], "capmoe.json")):
            errs.append("grafana volume for %s has no capmoe.json (source %s)" % (p, m[0]))

    for e in errs:
        print("compose: " + e)
    if errs:
        return 1
    print("compose: ok: services %s; healthcheck %s; port %d; stop_grace_period %ss > drain %ss"
          % (sorted(svcs), " ".join(test[1:]), port, sgp, drain))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
