#!/usr/bin/env python3
"""Expert parallelism across MPI processes (--ep mpi) against single-process
runs of the same CLI (dispatch-spec.md, "Distributed expert parallelism"):

- policy none: `mpirun -np R capmoe logits --ep mpi` equals the
  single-process logits of the whole batch (relative error < 1e-5), loads
  equal; also with fewer sequences than ranks (a rank without tokens takes
  part in every exchange with nothing to send);
- every capacity policy (drop, reroute, expanded, rank_drop, auto), piggyback
  and the regime split (decode policy piggyback below 16 tokens): the rows
  of rank r's sequences equal a single-process run of rank r's sequences
  alone with the same options, --ep-ranks R and every sequence placed on
  rank r (--seq-ranks; this is what makes Expanded Drop's local experts the
  rank's own), the capacity and capacity factor of source r equal that
  run's, and the MPI loads / dropped / rerouted are the sums over ranks.

usage: mpi_parity_check.py FIXTURE_DIR CAPMOE_BINARY [RANKS...]   (default 2 4)
Standard library only; mpirun from Open MPI (or MPICH) on the PATH."""
import json
import os
import struct
import subprocess
import sys
import tempfile

TOL = 1e-5
MPIRUN = os.environ.get("MPIRUN", "mpirun")


def mpirun_args(R):
    args = [MPIRUN, "-np", str(R)]
    out = subprocess.run([MPIRUN, "--version"], capture_output=True, text=True).stdout
    if "Open MPI" in out or "OpenRTE" in out:
        args += ["--oversubscribe", "--bind-to", "none"]
        if os.geteuid() == 0:
            args += ["--allow-run-as-root"]
        # pass the sanitizer settings of the test environment to every rank
        for k in ("ASAN_OPTIONS", "LSAN_OPTIONS", "UBSAN_OPTIONS",
                  "OMPI_MCA_mca_base_component_disable_dlclose",
                  "PMIX_MCA_mca_base_component_disable_dlclose"):
            if k in os.environ:
                args += ["-x", k]
    return args


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), p.returncode, p.stderr.strip()[-2000:]))
    return json.loads(p.stdout)


def read_f32(path):
    data = open(path, "rb").read()
    return struct.unpack("<%df" % (len(data) // 4), data)


def rel_err(got, ref):
    scale = max(abs(x) for x in ref) or 1.0
    return max(abs(a - b) for a, b in zip(got, ref)) / scale


def main():
    fixture, binary = sys.argv[1], sys.argv[2]
    ranks = [int(x) for x in sys.argv[3:]] or [2, 4]
    cfg = json.load(open(os.path.join(fixture, "config.json")))
    E = cfg.get("num_local_experts") or cfg.get("num_experts")
    V = cfg["vocab_size"]
    prompts = json.load(open(os.path.join(fixture, "parity", "cases.json")))["prompts"]
    policies = [
        ("drop_g1", ["--policy", "drop", "--capacity-factor", "1.0"]),
        ("reroute_g075_renorm", ["--policy", "reroute", "--capacity-factor", "0.75", "--renormalize"]),
        ("expanded_g1", ["--policy", "expanded", "--capacity-factor", "1.0"]),
        ("rank_drop_g1", ["--policy", "rank_drop", "--capacity-factor", "1.0"]),
        ("drop_auto", ["--policy", "drop", "--capacity-factor", "auto", "--drop-budget", "0.05"]),
        ("piggyback_k01", ["--policy", "piggyback", "--piggyback-k0", "1"]),
        # each source's own T_r decides its regime: below 16 tokens piggyback, else drop
        ("split_piggyback_drop", ["--policy", "drop", "--capacity-factor", "1.0", "--decode-policy",
                                  "piggyback", "--regime-tokens", "16"]),
    ]
    failures = 0
    with tempfile.TemporaryDirectory() as td:
        def logits(batch, opts, R=None, seq_ranks=None):
            out = os.path.join(td, "l.bin")
            cmd = [binary, "logits", "--model", fixture, "--out", out, "--min-tokens", "0"] + opts
            for p in batch:
                cmd += ["--ids", ",".join(str(x) for x in p)]
            if seq_ranks is not None:
                cmd += ["--seq-ranks", ",".join(str(x) for x in seq_ranks)]
            if R is not None:
                cmd = mpirun_args(R) + cmd + ["--ep", "mpi"]
            res = run(cmd)
            return res, read_f32(out)

        for R in ranks:
            if E % R:
                continue
            # policy none: the whole batch, and a batch with fewer sequences than ranks
            for batch in (prompts, prompts[:max(1, R // 2)]):
                ref_res, ref = logits(batch, [])
                res, got = logits(batch, [], R=R)
                e = rel_err(got, ref) if len(got) == len(ref) else float("inf")
                ok = e < TOL and res["loads"] == ref_res["loads"]
                print("%s R=%d none (%d sequences): rel err %.2e, loads %s" %
                      ("ok  " if ok else "FAIL", R, len(batch), e, "equal" if res["loads"] == ref_res["loads"] else "DIFFER"))
                failures += not ok
            # capacity policies: rank r's rows against rank r's sequences alone
            for name, opts in policies:
                res, got = logits(prompts, opts, R=R)
                problems = []
                rows = {}  # sequence -> (offset, length) in the batch's logits
                off = 0
                for i, p in enumerate(prompts):
                    rows[i] = (off, len(p) * V)
                    off += len(p) * V
                loads = None
                dropped = rerouted = piggybacked = 0
                for r in range(R):
                    mine = [i for i in range(len(prompts)) if i % R == r]
                    if not mine:
                        continue
                    sres, sref = logits([prompts[i] for i in mine], opts + ["--ep-ranks", str(R)],
                                        seq_ranks=[r] * len(mine))
                    g = []
                    for i in mine:
                        o, n = rows[i]
                        g += got[o:o + n]
                    e = rel_err(g, sref)
                    if not e < TOL:
                        problems.append("rank %d rows: rel err %.2e" % (r, e))
                    for l in range(len(res["capacity"])):
                        if res["capacity"][l][r] != sres["capacity"][l]:
                            problems.append("layer %d source %d capacity %s != %s" %
                                            (l, r, res["capacity"][l][r], sres["capacity"][l]))
                        if res["activated"][l][r] != sres["activated"][l]:
                            problems.append("layer %d source %d activated %s != %s" %
                                            (l, r, res["activated"][l][r], sres["activated"][l]))
                        if res["capacity_factor"][l][r] != sres["capacity_factor"][l]:
                            problems.append("layer %d source %d gamma %s != %s" %
                                            (l, r, res["capacity_factor"][l][r], sres["capacity_factor"][l]))
                    sl = sres["loads"]
                    loads = sl if loads is None else [[a + b for a, b in zip(x, y)] for x, y in zip(loads, sl)]
                    dropped += sres["dropped"]
                    rerouted += sres["rerouted"]
                    piggybacked += sres["piggybacked"]
                if piggybacked != res["piggybacked"]:
                    problems.append("piggybacked %d != %d" % (res["piggybacked"], piggybacked))
                if loads != res["loads"]:
                    problems.append("loads %s != sum over ranks %s" % (res["loads"], loads))
                if dropped != res["dropped"] or rerouted != res["rerouted"]:
                    problems.append("dropped/rerouted %d/%d != %d/%d" %
                                    (res["dropped"], res["rerouted"], dropped, rerouted))
                print("%s R=%d %s%s" % ("ok  " if not problems else "FAIL", R, name,
                                       "" if not problems else ": " + "; ".join(problems[:4])))
                failures += bool(problems)
    print("%s: %s" % (fixture, "ok" if failures == 0 else "%d failures" % failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
