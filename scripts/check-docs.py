#!/usr/bin/env python3
"""Check the docs' pointers: README.md, CHANGELOG.md and docs/*.md.

1. Every relative markdown link or image, `[text](path)` or `[text](path#anchor)`, names an
   existing file or folder; an `#anchor` into a .md file (or `(#anchor)` into the same file)
   names one of its headings, slugged as GitHub does (lowercase; drop everything but
   letters, digits, spaces, '-' and '_'; spaces to '-'; a repeated heading gets -1, -2...).
2. Every word inside an inline code span that starts with a top-level folder of the repo
   (TOP below) followed by '/' names an existing file or folder, relative to the repo root.
   Skipped (SKIP_MARKERS): globs and placeholders, i.e. words containing one of
   * ? [ { < ... or the ellipsis character. Build outputs (target/...) and output folders
   (runs/..., out/...) are not top-level folders of the repo, so they are never checked.

Code blocks (``` fences) are not read: they hold commands, whose paths the commands check.
Prints one line per problem, FILE:LINE: message, and exits 1 if there is any.
Standard library only (Python 3.8+).
"""

import os
import re
import sys
import unicodedata

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

# The repo's top-level folders: a code span's word that starts with one of these and '/'
# is taken as a repo path.
TOP = (
    ".ci", "core", "docs", "examples", "ffi", "fuzz", "include", "python",
    "robots", "runtime", "scripts", "tests", "trainer",
)
# A word containing any of these is a glob or a placeholder, not a path.
SKIP_MARKERS = ("*", "?", "[", "{", "<", "...", "\u2026")

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^ {0,3}(```+|~~~+)")


def doc_files():
    files = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "CHANGELOG.md")]
    docs = os.path.join(ROOT, "docs")
    files += sorted(
        os.path.join(docs, f) for f in os.listdir(docs) if f.endswith(".md")
    )
    return [f for f in files if os.path.isfile(f)]


def strip_code(text):
    """The text with fenced blocks and inline code spans blanked (same offsets), and the
    inline code spans as (offset, content)."""
    out = list(text)
    spans = []
    lines = text.split("\n")
    pos = 0
    fence = None
    prose = []  # (start, end) offsets of lines outside fences
    for line in lines:
        end = pos + len(line)
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * 3
            blank = True
        elif fence is not None:
            blank = True
            if m and m.group(1).startswith(fence):
                fence = None
        else:
            blank = False
            prose.append((pos, end))
        if blank:
            for i in range(pos, end):
                out[i] = " "
        pos = end + 1
    # Inline code spans: a run of backticks up to the same run (may cross lines).
    blanked = "".join(out)
    for m in re.finditer(r"(`+)(.+?)(?<!`)\1(?!`)", blanked, re.S):
        spans.append((m.start(2), m.group(2)))
        for i in range(m.start(), m.end()):
            if out[i] != "\n":
                out[i] = " "
    return "".join(out), spans


def slug(heading):
    """GitHub's anchor for a heading's text."""
    t = heading
    t = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", t)  # links and images: their text
    t = t.replace("`", "")
    t = re.sub(r"<[^>]+>", "", t)  # inline HTML tags
    t = t.strip().lower()
    kept = []
    for ch in t:
        cat = unicodedata.category(ch)
        if ch in " -_" or cat[0] in "LN" or cat == "Mn" or cat == "Mc":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


_anchor_cache = {}


def anchors(path):
    if path in _anchor_cache:
        return _anchor_cache[path]
    with open(path, encoding="utf-8") as f:
        text = f.read()
    blanked, _ = strip_code(text)
    # Headings are read from the original text of lines outside fences.
    seen = {}
    result = set()
    for raw, masked in zip(text.split("\n"), blanked.split("\n")):
        if not masked.strip():
            continue
        m = HEADING.match(raw)
        if not m:
            continue
        s = slug(m.group(2))
        n = seen.get(s, 0)
        seen[s] = n + 1
        result.add(s if n == 0 else "%s-%d" % (s, n))
    for m in re.finditer(r"<a\s+(?:name|id)=\"([^\"]+)\"", text):
        result.add(m.group(1))
    _anchor_cache[path] = result
    return result


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def check_file(path, problems):
    rel = os.path.relpath(path, ROOT)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    prose, spans = strip_code(text)
    here = os.path.dirname(path)

    for m in LINK.finditer(prose):
        target = m.group(1).strip("<>")
        where = "%s:%d" % (rel, line_of(text, m.start()))
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # external (http:, https:, mailto:...)
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(here, file_part)) if file_part else path
        if not dest.startswith(ROOT):
            problems.append("%s: link %s leaves the repo" % (where, target))
            continue
        if not os.path.exists(dest):
            problems.append("%s: link %s: no such file" % (where, target))
            continue
        if anchor and dest.endswith(".md"):
            if anchor not in anchors(dest):
                problems.append(
                    "%s: link %s: no heading with anchor #%s in %s"
                    % (where, target, anchor, os.path.relpath(dest, ROOT))
                )

    for offset, content in spans:
        for w in re.finditer(r"\S+", content):
            word = w.group(0)
            # Strip what surrounds a path in a command or a sentence.
            word = re.sub(r"^[-\w]*=", "", word)  # --flag=PATH, VAR=PATH
            word = word.strip("\"'(),;")
            word = re.sub(r":\d+(:\d+)?$", "", word)  # path:line
            word = word.split("#", 1)[0]
            if "/" not in word or word.split("/", 1)[0] not in TOP:
                continue
            if any(mark in word for mark in SKIP_MARKERS):
                continue
            if not os.path.exists(os.path.join(ROOT, word)):
                where = "%s:%d" % (rel, line_of(text, offset + w.start()))
                problems.append("%s: path `%s` does not exist" % (where, word))


def main():
    problems = []
    files = doc_files()
    for path in files:
        check_file(path, problems)
    for p in problems:
        print(p)
    if problems:
        print("check-docs: %d problem(s) in %d file(s)" % (len(problems), len(files)))
        return 1
    print("check-docs: %d files, every link and named path resolves" % len(files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
