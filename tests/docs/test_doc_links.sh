#!/usr/bin/env bash
# The documentation's links hold: in every Markdown file of the repository (the README,
# docs/, bench/, cluster/, launch/), each relative link names a file or folder that exists,
# and each #anchor names a heading of the file it points into (GitHub's heading ids).
# Links inside code are not links; http(s) and mailto links are not checked.
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
exec python3 - "$ROOT" <<'PY'
import os, re, sys

root = sys.argv[1]
files = [os.path.join(root, "README.md")]
for top in ("docs", "bench", "cluster", "launch", "tests"):
    for d, dirs, names in os.walk(os.path.join(root, top)):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        files += [os.path.join(d, n) for n in sorted(names) if n.endswith(".md")]

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")


def prose(path):
    """The file's lines outside fenced and indented code, inline code removed."""
    out, fenced = [], False
    for line in open(path, encoding="utf-8"):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            continue
        out.append(re.sub(r"`[^`]*`", "", line))
    return out


def anchors(path, cache={}):
    """GitHub's ids of the file's headings: lower case, punctuation dropped, spaces to
    hyphens, a repeated id numbered -1, -2, ..."""
    if path not in cache:
        ids, seen, fenced = set(), {}, False
        for line in open(path, encoding="utf-8"):
            if FENCE.match(line):
                fenced = not fenced
            m = None if fenced else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            text = LINK.sub(lambda l: l.group(1), m.group(1))
            slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            ids.add(slug if n == 0 else "%s-%d" % (slug, n))
        cache[path] = ids
    return cache[path]


bad = checked = 0
for f in files:
    for no, line in enumerate(prose(f), 1):
        for m in LINK.finditer(line):
            target = m.group(2)
            if re.match(r"[a-z]+:", target):
                continue
            checked += 1
            path, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
            where = os.path.relpath(f, root)
            if not os.path.exists(dest):
                print("FAIL %s: link to %s: no such file" % (where, target))
                bad += 1
            elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
                print("FAIL %s: link to %s: no heading with that id" % (where, target))
                bad += 1
print("%d links in %d files checked, %d broken" % (checked, len(files), bad))
sys.exit(1 if bad else 0)
PY
