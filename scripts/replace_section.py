#!/usr/bin/env python3
"""Rewrites the part of a Markdown file between `<!-- NAME:begin -->` and
`<!-- NAME:end -->` with new text (a table a build printed, say).

    scripts/replace_section.py FILE NAME TEXT
"""
import sys
from pathlib import Path


def main() -> None:
    path, name, text = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    document = path.read_text()
    if document.count(begin) != 1 or document.count(end) != 1:
        sys.exit(f"{path}: needs exactly one {begin} and one {end}")
    head, rest = document.split(begin)
    _, tail = rest.split(end)
    path.write_text(f"{head}{begin}\n{text.strip()}\n{end}{tail}")


if __name__ == "__main__":
    main()
