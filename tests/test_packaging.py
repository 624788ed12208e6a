"""The built wheel carries every subpackage and the data files the library reads at run time
(the shipped generator weights and the UAR calibration), and works when installed alone."""

import subprocess
import sys
import zipfile
from pathlib import Path

import manidefense

ROOT = Path(__file__).resolve().parent.parent


def _build_wheel(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("manidefense-*.whl")
    return wheel


def test_wheel_has_the_package_data_and_every_subpackage(tmp_path):
    wheel = _build_wheel(tmp_path)
    assert f"-{manidefense.__version__}-" in wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    for data in ("manidefense/py.typed", "manidefense/evaluation/data/uar_calibration.json",
                 "manidefense/zoo/weights/style_generator_fashion_mnist.keras"):
        assert data in names
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "manidefense").rglob("__init__.py")}
    assert packages <= names


def test_installed_wheel_imports_and_reads_its_data(tmp_path):
    wheel = _build_wheel(tmp_path)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(site), str(wheel)], check=True, capture_output=True)
    code = (
        "import manidefense as md\n"
        "from manidefense.evaluation.uar import load_calibration\n"
        "print(md.__file__)\n"
        "print(md.zoo.StyleGenerator.pretrained().num_layers)\n"
        "print(sorted(load_calibration((28, 28, 1)))[0])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                         capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "TF_CPP_MIN_LOG_LEVEL": "3",
                              "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(site))
    assert out[1] == "6" and out[2] == "elastic"
