"""Griffe extension: read manidefense's Keras-style docstrings as Google-style ones.

The library writes its docstrings in Keras' style (DESIGN.md): an `Example:` heading followed
by *unindented* doctest lines. Griffe's Google parser only knows an `Examples:` section with
an indented body, so without this extension the doctest lines would render as nested block
quotes (`>>>`) and their brackets as Markdown links. The extension rewrites the docstring
text before griffe parses it; the library's files are not touched:

- `Example:` / `Examples:` followed by unindented lines becomes an `Examples:` section whose
  body (up to the next section heading at the same level) is indented;
- math notation such as `G[F](x)` outside code is escaped so that Markdown does not read
  `[F](x)` as a link.
"""

import re

import griffe

SECTION = re.compile(
    r"^(Args|Arguments|Params|Parameters|Keyword Args|Keyword Arguments|Other Parameters|"
    r"Returns|Return|Yields|Yield|Receives|Raises|Raise|Exceptions|Except|Warns|Warnings|"
    r"Warning|Attributes|Functions|Methods|Classes|Modules|Examples|Example|Note|Notes|"
    r"Reference|References|See Also|Call arguments|Input shape|Output shape|Todo)\s*:\s*$")
EXAMPLE = re.compile(r"^Examples?\s*:\s*$")
# `[text](` glued to a preceding word character: notation like G[F](x), never a real link.
GLUED_LINK = re.compile(r"(?<=\w)\[(?=[^\]\n]*\]\()")


def _indent_examples(lines):
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        if not EXAMPLE.match(line):
            out.append(line)
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j == len(lines) or lines[j].startswith((" ", "\t")):
            out.append("Examples:")  # already indented: only the heading griffe knows
            i += 1
            continue
        out.append("Examples:")
        i = j
        while i < len(lines) and not SECTION.match(lines[i]):
            out.append("    " + lines[i] if lines[i].strip() else "")
            i += 1
        while out and not out[-1]:
            out.pop()
        out.append("")
    return out


def _escape_notation(lines):
    out, fenced = [], False
    for line in lines:
        stripped = line.lstrip()
        if stripped.startswith(("```", "~~~")):
            fenced = not fenced
        if fenced or stripped.startswith((">>>", "...")):
            out.append(line)
            continue
        parts = line.split("`")  # even parts are outside inline code
        out.append("`".join(GLUED_LINK.sub(r"\\[", part) if k % 2 == 0 else part
                            for k, part in enumerate(parts)))
    return out


def rewrite(text):
    """The docstring `text` with Keras-style examples and notation made Google-style."""
    lines = _escape_notation(_indent_examples(text.split("\n")))
    return "\n".join(lines).rstrip("\n")


class KerasDocstrings(griffe.Extension):
    """Rewrites every docstring once, before it is parsed."""

    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
