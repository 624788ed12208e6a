"""Private helper for the scripts in `bench/` and `models/`: rewrite one `## section` of a
Markdown results file (BENCHMARKS.md, models/RESULTS.md) and keep every other section."""

import re
from pathlib import Path


def update_section(path, section, text, header):
    """Replaces the `## section` part of the file at `path` with `text` (which starts with
    that heading), or appends it; a missing file starts as `header`."""
    path = Path(path)
    old = path.read_text() if path.exists() else header
    pattern = re.compile(rf"^## {re.escape(section)}[ \t]*\n.*?(?=^## |\Z)",
                         re.MULTILINE | re.DOTALL)
    if pattern.search(old):
        new = pattern.sub(lambda _: text.rstrip("\n") + "\n\n", old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")
