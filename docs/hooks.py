"""MkDocs hooks: bring files that live outside `docs/` into the site at build time.

Nothing is copied into the source tree and no symlink is needed, so a fresh clone builds:

- the tutorial notebooks `tutorials/*.ipynb` become virtual pages `tutorials/<name>.ipynb`
  (mkdocs-jupyter renders them without executing them);
- a line `<!-- include: PATH -->` in a page is replaced by the file PATH (relative to the
  repository root), and `<!-- include: PATH#SECTION -->` by the body of one section of it,
  where SECTION is a `/`-separated path of headings (`rbf_cnn/Robust accuracy (%)`; a
  trailing `/` keeps only the text before the section's first sub-heading). The
  measured numbers (models/RESULTS.md, BENCHMARKS.md) and the changelog are thus quoted from
  their one home, never retyped; a missing file or section fails the build.
"""

import pathlib
import re

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

INCLUDE = re.compile(r"^<!-- include: (?P<path>[^#>]+?)(?:#(?P<section>[^>]+?))? -->[ \t]*$",
                     re.MULTILINE)
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$")
FENCE = re.compile(r"^(```|~~~)")


def _root(config):
    return pathlib.Path(config.config_file_path).resolve().parent


@event_priority(100)  # before mkdocs-jupyter's on_files, which claims the .ipynb files
def on_files(files, config):
    root = _root(config)
    for notebook in sorted((root / "tutorials").glob("*.ipynb")):
        uri = f"tutorials/{notebook.name}"
        if files.get_file_from_path(uri) is None:
            # A plain File whose source directory is the repository root (not a generated
            # File: mkdocs-jupyter's NotebookFile finds the notebook through `src_dir`).
            files.append(File(uri, src_dir=str(root), dest_dir=config.site_dir,
                              use_directory_urls=config.use_directory_urls))
    return files


def _headings(lines):
    """Yields `(index, level, title)` for every Markdown heading outside code fences."""
    fenced = False
    for index, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            yield index, len(match.group(1)), match.group(2).strip()


def section(text, path, source="the file"):
    """The body of the section at heading path `path` (titles joined by `/`) of `text`.

    A trailing `/` returns only the section's introduction (the text before its first
    sub-heading).
    """
    intro_only = path.endswith("/")
    path = path.rstrip("/")
    lines = text.splitlines()
    start, end, level = 0, len(lines), 0
    for title in path.split("/"):
        title = title.strip()
        found = None
        for index, depth, name in _headings(lines[start:end]):
            if depth > level and name == title:
                found = (start + index, depth)
                break
        if found is None:
            raise PluginError(f"docs include: no section {title!r} (of {path!r}) in {source}")
        index, level = found
        start = index + 1
        end = next((start + i for i, depth, _ in _headings(lines[start:end]) if depth <= level),
                   end)
    if intro_only:
        end = next((start + i for i, _, _ in _headings(lines[start:end])), end)
    return "\n".join(lines[start:end]).strip("\n")


def include(markdown, root, page_path):
    def replace(match):
        path = match.group("path").strip()
        target = (root / path).resolve()
        if root not in target.parents or not target.is_file():
            raise PluginError(f"docs include in {page_path}: no file {path!r} in the repository")
        text = target.read_text(encoding="utf-8")
        if match.group("section"):
            text = section(text, match.group("section"), path)
        # Raw <details> blocks: let Markdown (md_in_html) render the tables inside them.
        return text.replace("<details>", '<details markdown="1">')

    return INCLUDE.sub(replace, markdown)


def on_page_markdown(markdown, page, config, files):
    return include(markdown, _root(config), page.file.src_uri)
