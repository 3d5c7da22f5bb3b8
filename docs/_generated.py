"""What the docs generators share: blocks between markers, and --check."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path


def replace_block(doc: Path, text: str, name: str, body: str) -> str:
    """`text` with what stands between <!-- name:begin --> and <!-- name:end --> set to body."""
    pat = re.compile(rf"(<!-- {name}:begin[^>]*-->\n)(?:.*?\n)?(<!-- {name}:end -->)", re.S)
    if not pat.search(text):
        raise SystemExit(f"{doc}: markers <!-- {name}:begin --> / <!-- {name}:end --> not found")
    return pat.sub(lambda m: m.group(1) + body.rstrip("\n") + "\n" + m.group(2), text)


def run(doc: Path, build: Callable[[str], tuple[str, str]], description: str,
        script: str) -> int:
    """Rewrite `doc` with `build(old) -> (new, message)`, or with --check exit 1 if stale."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    args = ap.parse_args()
    old = doc.read_text()
    new, message = build(old)
    if args.check:
        if new != old:
            print(f"{doc} is out of date; run python docs/{script}", file=sys.stderr)
            return 1
        return 0
    doc.write_text(new)
    print(f"wrote {doc}; {message}")
    return 0
