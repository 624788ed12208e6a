"""The documentation site builds strictly, has every page, and fails on a broken reference.

The site is built from a temporary copy of exactly the files it needs (mkdocs.yml, docs/, the
tutorial notebooks, the files docs/hooks.py includes, and the package whose docstrings make the
API reference), so files left in the working tree cannot hide a missing one. A second copy with
one cross-reference pointed at an object that does not exist must fail `--strict`.
"""

import importlib
import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mkdocs.exceptions import PluginError  # the docs extra is part of dev: no skip

ROOT = Path(__file__).resolve().parent.parent
# Everything the build reads: the config, the pages and hooks, the notebooks, the files the
# `<!-- include: ... -->` lines quote, and the package (the API reference is its docstrings).
NEEDED = ("mkdocs.yml", "docs", "tutorials", "CHANGELOG.md", "BENCHMARKS.md",
          "models/RESULTS.md", "manidefense")
NOTEBOOKS = sorted(p.stem for p in (ROOT / "tutorials").glob("*.ipynb"))
PAGES = [
    "index.html", "getting-started/index.html", "attacks/index.html",
    "evaluation/index.html", "production/index.html", "benchmarks/index.html",
    "changelog/index.html", "defenses/index.html", "defenses/rbf-cnn/index.html",
    "defenses/model-shells/index.html", "defenses/dmat/index.html", "defenses/gat/index.html",
    "defenses/smoothing/index.html", "defenses/disentangling/index.html",
    "tutorials/index.html", "api/index.html",
    *(f"api/{name}/index.html" for name in (
        "attacks", "unforeseen", "layers", "shells", "training", "certification",
        "evaluation", "manifold", "theory", "callbacks", "serving", "distribute", "datasets",
        "zoo", "visualization", "stats", "validation")),
    *(f"tutorials/{stem}/index.html" for stem in NOTEBOOKS),
]
# Subpackages and modules with an API page, and the page that documents them.
API_MODULES = {
    "attacks": "attacks", "attacks.unforeseen": "unforeseen", "layers": "layers",
    "shells": "shells", "training": "training", "certification": "certification",
    "evaluation": "evaluation", "manifold": "manifold", "theory": "theory",
    "callbacks": "callbacks", "serving": "serving", "distribute": "distribute",
    "datasets": "datasets", "zoo": "zoo", "visualization": "visualization", "stats": "stats",
    "validation": "validation",
}
BROKEN_TARGET = "manidefense.shells.NoSuchShell"


def _copy(destination):
    for name in NEEDED:
        source = ROOT / name
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target,
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copy2(source, target)
    return destination


def _build(directory):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", "site"],
        cwd=directory, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The strict build of a copy of the needed files: `(site directory, build output)`."""
    directory = _copy(tmp_path_factory.mktemp("docs_ok"))
    result = _build(directory)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output[-4000:]}"
    return directory / "site", output


def test_strict_build_has_every_page(site):
    site_dir, output = site
    assert not re.search(r"^(WARNING|ERROR)\b", output, re.MULTILINE), output[-4000:]
    assert len(NOTEBOOKS) == 9
    built = {str(p.relative_to(site_dir)) for p in site_dir.rglob("index.html")}
    missing = sorted(set(PAGES) - built)
    assert not missing, f"pages not built: {missing}"
    # A reader can reach every page: none exists outside the navigation.
    nav = (site_dir / "index.html").read_text(encoding="utf-8")
    for page in PAGES:
        link = page.removesuffix("index.html")
        assert link == "" or f'href="{link}"' in nav, f"{page} is not in the navigation"


def test_api_reference_lists_every_public_name(site):
    site_dir, _ = site
    shells = (site_dir / "api/shells/index.html").read_text(encoding="utf-8")
    assert 'id="manidefense.shells.ModelShell"' in shells
    assert "base_model" in shells  # the Args section of ModelShell's docstring
    anchors = set()
    for page in (site_dir / "api").rglob("index.html"):
        anchors |= set(re.findall(r'id="(manidefense[\w.]*)"', page.read_text(encoding="utf-8")))
    missing = []
    for module_name in API_MODULES:
        module = importlib.import_module(f"manidefense.{module_name}")
        names = getattr(module, "__all__", None)
        if names is None:  # no __all__: the classes and functions the module defines
            names = [n for n, o in vars(module).items() if not n.startswith("_")
                     and (inspect.isclass(o) or inspect.isfunction(o))
                     and o.__module__ == module.__name__]
        for name in names:
            obj = getattr(module, name)
            ids = {f"manidefense.{module_name}.{name}"}
            if getattr(obj, "__qualname__", None) and isinstance(getattr(obj, "__module__", None),
                                                                 str):
                ids.add(f"{obj.__module__}.{obj.__qualname__}")  # its canonical path
            if not ids & anchors:
                missing.append(f"manidefense.{module_name}.{name}")
    assert not missing, f"public names without an API entry: {missing}"


def test_docstring_examples_render_as_code(site):
    site_dir, _ = site
    page = (site_dir / "api/shells/index.html").read_text(encoding="utf-8")
    start = page.index('id="manidefense.shells.ModelShell"')
    chunk = page[start:page.index('id="manidefense.shells.ModelShell.', start)]
    assert 'doc-section-title">Examples' in chunk
    assert '<span class="gp">&gt;&gt;&gt; </span>' in chunk  # a highlighted doctest
    assert "<blockquote>" not in chunk  # `>>>` read as Markdown quotes


def test_tutorials_and_included_numbers(site):
    site_dir, _ = site
    for stem in NOTEBOOKS:  # every notebook rendered with all its code cells
        cells = json.loads((ROOT / f"tutorials/{stem}.ipynb").read_text(encoding="utf-8"))
        code = sum(cell["cell_type"] == "code" for cell in cells["cells"])
        html = (site_dir / f"tutorials/{stem}/index.html").read_text(encoding="utf-8")
        rendered = re.findall(r'<div class="jp-Cell jp-CodeCell[^"]*" id="cell-id=', html)
        assert len(rendered) == code, stem
    notebook = (site_dir / "tutorials/01_attack_a_keras_model/index.html").read_text(
        encoding="utf-8")
    assert "Attack a Keras model" in notebook
    # The reproduced table is the current models/RESULTS.md, not a copy typed into the docs.
    hooks = _load(ROOT / "docs/hooks.py", "docs_hooks")
    table = hooks.section((ROOT / "models/RESULTS.md").read_text(encoding="utf-8"),
                          "rbf_cnn/Robust accuracy (%)")
    row = [line for line in table.splitlines() if line.startswith("|")][2]  # first data row
    cells = [c.strip() for c in row.strip("|").split("|")]
    plain = [c for c in cells if c and not re.search(r"[*_`\[<&]", c)]
    assert len(plain) >= 3, row
    rbf = (site_dir / "defenses/rbf-cnn/index.html").read_text(encoding="utf-8")
    assert all(f"<td>{cell}</td>" in rbf for cell in plain), row
    assert 'class="arithmatex"' in rbf  # the equations reach MathJax
    changelog = (site_dir / "changelog/index.html").read_text(encoding="utf-8")
    assert "Unreleased" in changelog and "RobustnessMonitor" in changelog
    for page in site_dir.rglob("*.html"):
        assert "<!-- include:" not in page.read_text(encoding="utf-8"), page


def test_broken_cross_reference_fails_the_build(tmp_path):
    directory = _copy(tmp_path)
    page = directory / "docs/defenses/model-shells.md"
    text = page.read_text(encoding="utf-8")
    good = "[ModelShell][manidefense.shells.ModelShell]"
    assert good in text
    page.write_text(text.replace(good, f"[ModelShell][{BROKEN_TARGET}]", 1), encoding="utf-8")
    result = _build(directory)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    assert BROKEN_TARGET in output, output[-4000:]


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_include_sections_and_missing_ones():
    hooks = _load(ROOT / "docs/hooks.py", "docs_hooks")
    text = ("# Doc\n\n## a\n\nintro of a\n\n### table\n\n| x |\n|---|\n| 1 |\n\n### other\n\n"
            "```\n## not a heading\n```\nmore\n\n## b\n\nin b\n")
    assert hooks.section(text, "a/table") == "| x |\n|---|\n| 1 |"
    assert hooks.section(text, "a/") == "intro of a"
    assert hooks.section(text, "a/other") == "```\n## not a heading\n```\nmore"
    assert hooks.section(text, "b") == "in b"
    with pytest.raises(PluginError, match="no section 'missing'"):
        hooks.section(text, "a/missing")
    with pytest.raises(PluginError, match="no file"):
        hooks.include("<!-- include: NO_SUCH_FILE.md -->", ROOT, "page.md")
    with pytest.raises(PluginError, match="no file"):  # never outside the repository
        hooks.include("<!-- include: ../etc/passwd -->", ROOT, "page.md")


def test_keras_style_docstrings_become_google_style():
    extension = _load(ROOT / "docs/griffe_keras_docstrings.py", "griffe_keras_docstrings")
    keras_style = ("Wraps a model, G[F](x) = F(H(F, x)).\n\nArgs:\n    x: inputs, `m[i](j)`.\n\n"
                   "Example:\n>>> shell = ModelShell(cnn, MCN(0.1))\n>>> shell(x)[0]\n"
                   "array([0.1, 0.9])\n\nReference:\n    Wu et al.")
    rewritten = extension.rewrite(keras_style)
    assert "G\\[F](x)" in rewritten  # notation, not a Markdown link
    assert "`m[i](j)`" in rewritten  # inline code untouched
    assert ("Examples:\n    >>> shell = ModelShell(cnn, MCN(0.1))\n    >>> shell(x)[0]\n"
            "    array([0.1, 0.9])\n\nReference:\n    Wu et al.") in rewritten
    indented = "Summary.\n\nExample:\n    >>> f(1)\n    2"
    assert extension.rewrite(indented) == "Summary.\n\nExamples:\n    >>> f(1)\n    2"
