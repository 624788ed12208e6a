"""`python -m build` makes a wheel and an sdist that are complete and install into a fresh venv.

The build runs offline (no build isolation) on a copy of the tracked files, so neither build
litter in the working tree nor untracked files can hide a missing MANIFEST.in entry. A wheel is
also built from the unpacked sdist: the sdist alone must be enough. The wheel and the sdist each
go into a fresh venv (`python -m venv`), which borrows the heavy dependencies (TensorFlow, Keras,
...) from the development venv through a `.pth` file pointing at a filtered view of its
site-packages (everything but the editable manidefense), so nothing is downloaded; a smoke test
then runs in that venv's own python and console script.
"""

import email
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import manidefense

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
NAME = "manidefense"
VERSION = manidefense.__version__
DATA = ("manidefense/py.typed", "manidefense/evaluation/data/uar_calibration.json",
        "manidefense/zoo/weights/style_generator_fashion_mnist.keras")
SDIST_FILES = ("README.md", "CHANGELOG.md", "pyproject.toml", "setup.py")


def _run(args, **kwargs):
    """Runs a command; on failure the assertion shows its output."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, (f"{' '.join(map(str, args))} failed ({done.returncode}):\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


# Outside a git checkout (e.g. an unpacked sdist) the source files are the tree minus these.
UNTRACKED = {".git", ".venv", "build", "dist", "site", "__pycache__", ".pytest_cache",
             ".ruff_cache", ".hypothesis", "manidefense-demo", "results", ".cache"}


def _tracked_files():
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and not (
            UNTRACKED & set(p.relative_to(ROOT).parts) or p.suffix == ".pyc"
            or any(part.endswith(".egg-info") for part in p.parts))]
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def _build(src, outdir, *kinds):
    _run([sys.executable, "-m", "build", "--no-isolation", *kinds, "--outdir", outdir, src],
         cwd=src)


def _litter():
    """What a build in the working tree would leave: (name, mtime) of build/, dist/, *.egg-info."""
    found = [ROOT / "build", ROOT / "dist", *ROOT.glob("*.egg-info")]
    return {(p.name, p.stat().st_mtime_ns) for p in found if p.exists()}


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """Builds sdist + wheel from a copy of the tracked files, then a wheel from the sdist."""
    tmp = tmp_path_factory.mktemp("packaging")
    tracked = _tracked_files()
    src = tmp / "src"
    for rel in tracked:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    before = _litter()
    _build(src, tmp / "dist", "--sdist", "--wheel")
    (sdist,) = (tmp / "dist").glob("*.tar.gz")
    (wheel,) = (tmp / "dist").glob("*.whl")
    with tarfile.open(sdist) as tar:
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(tmp / "unpacked", **extra)
    (unpacked,) = (tmp / "unpacked").iterdir()
    _build(unpacked, tmp / "from_sdist", "--wheel")
    (wheel_from_sdist,) = (tmp / "from_sdist").glob("*.whl")
    return {"tmp": tmp, "tracked": tracked, "sdist": sdist, "wheel": wheel,
            "wheel_from_sdist": wheel_from_sdist, "litter": (before, _litter())}


def _wheel_names(wheel):
    with zipfile.ZipFile(wheel) as zf:
        return set(zf.namelist())


def _wheel_metadata(wheel):
    with zipfile.ZipFile(wheel) as zf:
        (meta,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(zf.read(meta))


def _sdist_names(sdist):
    """Member paths without the leading `name-version/` folder."""
    with tarfile.open(sdist) as tar:
        return {m.name.split("/", 1)[1] for m in tar.getmembers() if "/" in m.name}


def test_build_leaves_the_working_tree_alone(dists):
    before, after = dists["litter"]
    assert after == before


def test_files_are_named_with_the_package_version(dists):
    assert dists["sdist"].name == f"{NAME}-{VERSION}.tar.gz"
    for key in ("wheel", "wheel_from_sdist"):
        assert dists[key].name == f"{NAME}-{VERSION}-py3-none-any.whl"


def test_wheels_carry_every_module_and_data_file(dists):
    package_files = {p for p in dists["tracked"] if p.startswith(f"{NAME}/")}
    subpackages = {p for p in package_files if p.endswith("/__init__.py")}
    assert len(subpackages) >= 10 and set(DATA) <= package_files  # the test sees the tree
    assert any(p.startswith("manidefense/zoo/weights/") and p.endswith(".keras")
               for p in package_files)
    direct = _wheel_names(dists["wheel"])
    assert package_files <= direct, sorted(package_files - direct)
    # A wheel built from the unpacked sdist has the same files: the sdist is complete.
    from_sdist = _wheel_names(dists["wheel_from_sdist"])
    assert from_sdist == direct, sorted(from_sdist ^ direct)
    # Nothing from outside the package (tests, models, bench) leaks into the wheel.
    assert {n.split("/")[0] for n in direct} == {NAME, f"{NAME}-{VERSION}.dist-info"}


def test_sdist_carries_the_package_and_the_project_files(dists):
    names = _sdist_names(dists["sdist"])
    package_files = {p for p in dists["tracked"] if p.startswith(f"{NAME}/")}
    assert package_files <= names, sorted(package_files - names)
    licenses = {p for p in dists["tracked"] if "/" not in p and p.upper().startswith("LICEN")}
    wanted = set(SDIST_FILES) | licenses
    assert wanted <= names, sorted(wanted - names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


def test_metadata_version_dependencies_and_console_script(dists):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for key in ("wheel", "wheel_from_sdist"):
        meta = _wheel_metadata(dists[key])
        assert meta["Name"] == NAME and meta["Version"] == VERSION
        assert meta["Requires-Python"] == project["requires-python"]
        requires = [Requirement(r) for r in meta.get_all("Requires-Dist")]
        runtime = {str(r) for r in requires if r.marker is None}
        assert runtime == {str(Requirement(r)) for r in project["dependencies"]}
        extras = set(meta.get_all("Provides-Extra"))
        assert extras == set(project["optional-dependencies"])
        with zipfile.ZipFile(dists[key]) as zf:
            (ep,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
            assert f"{NAME} = {project['scripts'][NAME]}" in zf.read(ep).decode()
    with tarfile.open(dists["sdist"]) as tar:
        pkg_info = email.message_from_bytes(
            tar.extractfile(f"{NAME}-{VERSION}/PKG-INFO").read())
    assert pkg_info["Version"] == VERSION


# === Fresh venvs ===

SMOKE = r"""
import importlib.metadata, importlib.resources, json
import numpy as np
import keras
import manidefense as md
from manidefense.evaluation.uar import load_calibration

out = {"file": md.__file__, "version": md.__version__,
       "dist_version": importlib.metadata.version("manidefense"),
       "py_typed": (importlib.resources.files("manidefense") / "py.typed").is_file()}
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)])
x = np.random.default_rng(0).uniform(0.1, 0.9, (6, 8, 8, 1)).astype("float32")
y = np.array([0, 1, 2, 0, 1, 2])
for name, attack in [("fgsm", md.attacks.FGSM(eps=0.05, seed=0)),
                     ("pgd", md.attacks.PGD(eps=0.05, num_steps=5, seed=0))]:
    x_adv = np.asarray(attack(model, x, y))
    out[name] = {"linf": float(np.max(np.abs(x_adv - x))), "shape": list(x_adv.shape),
                 "low": float(x_adv.min()), "high": float(x_adv.max())}
gen = md.zoo.StyleGenerator.pretrained("fashion_mnist")
images = np.asarray(gen.sample(np.arange(2), seed=0)[2])
out["generator"] = {"shape": list(images.shape),
                    "in_range": bool(np.all((images >= 0) & (images <= 1)))}
out["calibration"] = sorted(load_calibration((28, 28, 1)))
print("SMOKE" + json.dumps(out))
"""


def _dev_site_view(tmp):
    """A folder of symlinks to the dev venv's site-packages minus manidefense itself."""
    view = tmp / "dev-site"
    if view.exists():
        return view
    view.mkdir()
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    for site in map(Path, sorted(dirs)):
        for entry in site.iterdir():
            name = entry.name.lower()
            if name.startswith(NAME) or (NAME in name and name.startswith("__editable__")) \
                    or name == "__pycache__" or (view / entry.name).exists():
                continue
            (view / entry.name).symlink_to(entry)
    return view


def _fresh_venv(tmp, name, dist, *pip_flags):
    """Creates a venv, makes the dev dependencies visible, installs `dist` offline."""
    venv = tmp / name
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
                   ).stdout.strip()
    Path(purelib, "_dev_dependencies.pth").write_text(f"{_dev_site_view(tmp)}\n")
    # pip (of the dev venv) installs into the fresh venv's interpreter; no index, no deps.
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", *pip_flags, dist])
    return venv


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


@pytest.fixture(scope="module", params=["wheel", "sdist"])
def installed(request, dists):
    tmp = dists["tmp"]
    flags = ("--no-build-isolation",) if request.param == "sdist" else ()
    venv = _fresh_venv(tmp, f"venv-{request.param}", dists[request.param], *flags)
    return request.param, venv


def test_installed_package_passes_the_smoke_test(installed, dists):
    kind, venv = installed
    script = dists["tmp"] / "smoke.py"
    script.write_text(SMOKE)
    out = _run([venv / "bin" / "python", script], cwd=dists["tmp"], env=_env()).stdout
    (line,) = [s for s in out.splitlines() if s.startswith("SMOKE")]
    res = json.loads(line[len("SMOKE"):])
    # The fresh venv's own copy, not the dev venv's editable install.
    assert Path(res["file"]).resolve().is_relative_to(venv.resolve()), res["file"]
    assert res["version"] == res["dist_version"] == VERSION
    assert res["py_typed"]
    for name in ("fgsm", "pgd"):
        att = res[name]
        assert att["shape"] == [6, 8, 8, 1]
        assert 0.0 < att["linf"] <= 0.05 + 1e-6, (name, att)
        assert att["low"] >= 0.0 and att["high"] <= 1.0
    assert res["generator"] == {"shape": [2, 28, 28, 1], "in_range": True}
    assert "elastic" in res["calibration"] and len(res["calibration"]) >= 5


def test_console_script_and_dependency_check(installed, dists):
    kind, venv = installed
    script = venv / "bin" / NAME
    # Its interpreter is the fresh venv's (a long path gets a /bin/sh trampoline).
    assert str(venv / "bin" / "python") in "\n".join(script.read_text().splitlines()[:3])
    out = _run([script, "--help"], cwd=dists["tmp"], env=_env()).stdout
    assert out.startswith("usage: manidefense")
    for command in ("demo", "evaluate", "certify"):
        assert command in out
    # The Requires-Dist lines are satisfied by the dependencies the venv sees (pip check).
    check = _run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "check",
                  "--disable-pip-version-check"], env=_env())
    assert "No broken requirements found" in check.stdout
