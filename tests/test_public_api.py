"""The public API documents itself: docstrings with an Example, and annotated signatures.

Public names are those in each subpackage's `__all__` (a module without one: its own top-level
functions and classes), the functions and classes of the submodules an `__all__` exports,
and the public methods and properties of public classes, inherited ones included when a
manidefense class defines them. Each is checked for:

- "docstring": a docstring;
- "example": an `Example:` section with `>>>` lines (functions, classes and methods);
- "hints": annotations on every parameter except `self`, `*args` and `**kwargs`, and a return
  annotation (functions, methods and properties; for a class, its `__init__` parameters).

Constants and submodules need a `#:` comment or a module docstring, not an example (listed in
`CONSTANTS` and `MODULES` with their reasons). Keras hooks (`call`, `build`, `get_config`, ...)
are Keras' contract and are not checked; `compile` and `__call__` need hints, not an example
(their class's example shows them).

"""

import functools
import importlib
import inspect
import re
import sys
import types

import pytest

import manidefense

SUBPACKAGES = [name for name in manidefense.__all__ if not name.startswith("__")]

# Plain constants in an `__all__`, with why no example applies. Each needs a `#:` comment on
# the line above its assignment (mkdocstrings shows it as the constant's documentation).
CONSTANTS = {
    "manidefense.certification.ABSTAIN": "a label value (-1) returned by PREDICT",
    "manidefense.datasets.DEBIAN_FASHION_MNIST_DIR": "a folder path",
    "manidefense.datasets.NAMES": "a tuple of dataset names",
    "manidefense.datasets.NUM_CLASSES": "a dict of class counts",
    "manidefense.datasets.SPLITS": "a tuple of split names",
    "manidefense.evaluation.PRESETS": "a table of builders; `make_attack` is the way in",
    "manidefense.layers.TEST_BETA1": "a number (25 ln 2)",
    "manidefense.layers.TRAIN_BETA1": "a number (125 ln 2)",
}

# Submodules in an `__all__`: they need a module docstring; their own functions and classes
# are checked like every other public name.
MODULES = {
    "manidefense.attacks.norms",
    "manidefense.attacks.objectives",
    "manidefense.evaluation.checks",
    "manidefense.evaluation.presets",
    "manidefense.evaluation.uar",
    "manidefense.manifold.em",
    "manidefense.manifold.patches",
    "manidefense.manifold.projection",
}

# Methods Keras calls, whose arguments and meaning Keras documents.
KERAS_HOOKS = {
    "build", "build_from_config", "call", "compute_output_shape", "compute_output_spec",
    "compile_from_config", "from_config", "get_build_config", "get_compile_config",
    "get_config", "load_own_variables", "metrics", "predict_step", "save_own_variables",
    "non_trainable_variables", "non_trainable_weights", "set_model", "test_step", "train_step",
    "trainable_variables", "trainable_weights", "variables", "weights",
}
# Methods shown by their class's example: hints are checked, an example is not required.
NO_EXAMPLE_METHODS = {"__call__", "compile"}

_EXAMPLE = re.compile(r"^\s*Examples?:\s*$(?:.|\n)*?^\s*>>> ", re.MULTILINE)


def _has_example(doc):
    return bool(doc and _EXAMPLE.search(doc))


def _missing_hints(fn, returns=True):
    """Parameters of `fn` without an annotation (and "return" when the return is bare)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    missing = [p.name for p in signature.parameters.values()
               if p.name not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL,
                                                                   p.VAR_KEYWORD)
               and p.annotation is inspect.Parameter.empty]
    if returns and signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def problems_of(obj, kind, name=""):
    """The set of checks `obj` fails: "docstring", "example", "hints"."""
    doc = obj.__doc__  # not inherited: an override without a docstring shows none
    found = set()
    if kind == "property":
        if not doc:
            found.add("docstring")
        if "return" not in getattr(obj.fget, "__annotations__", {}):
            found.add("hints")
        return found
    if kind == "class":
        owner = next(k for k in obj.__mro__ if "__init__" in vars(k))
        hints = (_missing_hints(obj, returns=False)
                 if owner.__module__.startswith("manidefense") else [])
    else:
        hints = _missing_hints(obj)
    if hints:
        found.add("hints")
    if name == "__call__":
        return found
    if not doc:
        found.add("docstring")
    if name not in NO_EXAMPLE_METHODS and not _has_example(doc):
        found.add("example")
    return found


def _own_names(module):
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [n for n, v in vars(module).items() if not n.startswith("_")
            and (inspect.isfunction(v) or inspect.isclass(v)) and v.__module__ == module.__name__]


def _members(cls):
    """`(defining class, name, member, kind)` of the public methods and properties of `cls`."""
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("manidefense"):
            continue
        for name, member in vars(klass).items():
            if name in seen or (name.startswith("_") and name != "__call__"):
                continue
            if name in KERAS_HOOKS or name.startswith("on_"):
                continue
            seen.add(name)
            if isinstance(member, property):
                yield klass, name, member, "property"
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if inspect.isfunction(member):
                yield klass, name, member, "method"


@functools.cache
def audit():
    """`({qualified name: problems}, {qualified name: defining file}, constants, modules)`."""
    problems, files, constants, modules = {}, {}, {}, set()

    def record(key, found, module_name):
        problems[key] = found
        files[key] = inspect.getsourcefile(sys.modules[module_name]) or ""

    def visit(module, depth):
        for name in _own_names(module):
            obj = getattr(module, name)
            if isinstance(obj, types.ModuleType):
                modules.add(obj.__name__)
                if depth == 0:
                    visit(obj, 1)
                continue
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                constants[f"{module.__name__}.{name}"] = obj
                continue
            key = f"{obj.__module__}.{obj.__qualname__}"
            kind = "class" if inspect.isclass(obj) else "function"
            record(key, problems_of(obj, kind), obj.__module__)
            if kind == "class":
                for klass, member_name, member, member_kind in _members(obj):
                    record(f"{klass.__module__}.{klass.__qualname__}.{member_name}",
                           problems_of(member, member_kind, member_name), klass.__module__)

    for sub in SUBPACKAGES:
        module = importlib.import_module(f"manidefense.{sub}")
        modules.add(module.__name__)
        visit(module, 0)
    return problems, files, constants, modules


def _report(entries):
    return "\n".join(f"  {key}: missing {sorted(missing)}" for key, missing in sorted(entries))


def _constant_problems(qualified):
    """`{"comment"}` unless a `#:` comment sits on the line above the constant's assignment."""
    name = qualified.rsplit(".", 1)[1]
    value = audit()[2][qualified]
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("manidefense") or (
                getattr(module, name, None) is not value):
            continue
        try:
            lines = inspect.getsource(module).splitlines()
        except (OSError, TypeError):
            continue
        for i, line in enumerate(lines):
            if re.match(rf"{name}\s*(:[^=]*)?=", line):
                return (f"{module.__name__}.{name}",
                        set() if i and lines[i - 1].startswith("#:") else {"comment"})
    return qualified, {"comment"}


def _all_problems():
    out = {key: found for key, found in audit()[0].items() if found}
    for qualified in CONSTANTS:
        key, found = _constant_problems(qualified)
        if found:
            out[key] = found
    return out


def test_public_names_have_docstrings_examples_and_hints():
    unexpected = sorted(_all_problems().items())
    assert not unexpected, "Public names lacking documentation or hints:\n" + _report(
        unexpected)


def test_constants_and_submodules_are_listed_and_documented():
    _, _, constants, modules = audit()
    assert set(constants) == set(CONSTANTS), (
        "Constants in an `__all__` must be listed in CONSTANTS (with a reason), and only "
        f"they: unlisted {sorted(set(constants) - set(CONSTANTS))}, gone "
        f"{sorted(set(CONSTANTS) - set(constants))}")
    exported = {m for m in modules if m.count(".") == 2}
    assert exported == MODULES, (f"unlisted {sorted(exported - MODULES)}, "
                                 f"gone {sorted(MODULES - exported)}")
    undocumented = [m for m in modules if not (sys.modules[m].__doc__ or "").strip()]
    assert not undocumented, f"Modules without a docstring: {undocumented}"


def _documented(x: int, y: float = 1.0) -> float:
    """Adds.

    Example:
    >>> _documented(1)
    2.0
    """
    return x + y


def _undocumented(x, y=1.0):
    """Adds, but shows no example."""
    return x + y


class _Shown:
    """A class.

    Args:
        size: a size.

    Example:
    >>> _Shown(3).size
    3
    """

    def __init__(self, size: int, **kwargs):
        self.size = size

    @property
    def half(self):
        return self.size / 2

    def __call__(self, x):
        return x


@pytest.mark.parametrize("obj, kind, name, expected", [
    (_documented, "function", "", set()),
    (_undocumented, "function", "", {"example", "hints"}),
    (_Shown, "class", "", set()),
    (_Shown.half, "property", "half", {"docstring", "hints"}),
    (_Shown.__call__, "method", "__call__", {"hints"}),
    (_Shown.__init__, "method", "compile", {"docstring", "hints"}),
])
def test_the_checker_detects_what_is_missing(obj, kind, name, expected):
    assert problems_of(obj, kind, name) == expected


def test_the_walk_reaches_methods_properties_and_submodules():
    problems, files, _, _ = audit()
    for key in ("manidefense.attacks.unforeseen.base.UnforeseenAttack.random_transform",
                "manidefense.evaluation.report.RobustnessReport.robust_accuracy",
                "manidefense.attacks.norms.project", "manidefense.manifold.em.e_step",
                "manidefense.zoo.style.StyleGenerator.sample", "manidefense.stats.binomial_test",
                "manidefense.shells.search.MCN.find", "manidefense.callbacks.RobustnessMonitor"):
        assert key in problems, key
    assert "manidefense.layers.rbf.RBFLayer.call" not in problems  # a Keras hook
    assert len(problems) > 200
