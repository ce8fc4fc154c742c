"""Write a corpus of Python's own documentation (pydoc's plain text of standard modules).

Used to measure fine-tuning (README, "Fine-tuning"): a text unlike Tiny Shakespeare, with
characters Shakespeare never uses (digits, brackets, braces, underscores, quotes, ...).
Nothing is downloaded and nothing is committed: it is built from the running Python.

    python bench/docs_corpus.py OUT.txt [--max-chars N]
"""

from __future__ import annotations

import argparse
import importlib
import pydoc

MODULES = [
    "collections",
    "itertools",
    "functools",
    "re",
    "json",
    "argparse",
    "pathlib",
    "subprocess",
    "typing",
    "dataclasses",
    "datetime",
    "decimal",
    "fractions",
    "statistics",
    "random",
    "string",
    "textwrap",
    "logging",
    "csv",
    "zipfile",
    "tarfile",
    "shutil",
    "tempfile",
    "inspect",
    "ast",
    "enum",
    "heapq",
    "bisect",
    "array",
    "struct",
    "codecs",
    "io",
    "pickle",
    "copy",
    "pprint",
    "difflib",
    "calendar",
    "configparser",
    "hashlib",
    "base64",
    "contextlib",
    "abc",
    "numbers",
    "math",
    "operator",
    "weakref",
    "types",
    "traceback",
    "warnings",
    "queue",
    "sched",
    "uuid",
    "ipaddress",
    "glob",
    "fnmatch",
    "filecmp",
    "platform",
    "tokenize",
    "keyword",
    "timeit",
    "tracemalloc",
    "sqlite3",
    "threading",
    "socket",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--max-chars", type=int, default=3_000_000)
    args = parser.parse_args()
    parts = []
    for name in MODULES:
        text = pydoc.plaintext.document(importlib.import_module(name))
        parts.append(pydoc.plain(text))
    corpus = "\n".join(parts)[: args.max_chars]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(corpus)
    print(f"{args.out}: {len(corpus):,} characters, {len(set(corpus))} distinct")


if __name__ == "__main__":
    main()
