"""Runs every notebook in `tutorials/` end to end in smoke mode, so a broken tutorial fails CI.

Each notebook is executed by a fresh "python3" kernel started with this very interpreter (the
virtual environment that holds manidefense), with `MANIDEFENSE_SMOKE=1` so that it trains and
attacks on tiny sizes. Committed notebooks must carry no outputs, so their diffs stay readable.
"""

import json
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))
KERNEL_NAME = "python3"
CELL_TIMEOUT = 600  # seconds per cell
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

parametrize_notebooks = pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])


@pytest.fixture
def smoke_kernel(tmp_path, monkeypatch):
    """Makes kernel "python3" run `sys.executable` and inherit the smoke-mode environment.

    A kernel spec in `$JUPYTER_PATH` takes precedence over user and system ones, so a
    "python3" kernel installed elsewhere (e.g. in ~/.local/share/jupyter) cannot replace the
    interpreter running the tests.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tests)",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    # The kernel inherits this process's environment.
    monkeypatch.setenv("MANIDEFENSE_SMOKE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    return KERNEL_NAME


def execute(nb, kernel_name, label):
    """Executes `nb` in place with its working directory in `tutorials/`; fails on any error."""
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(TUTORIALS)}})
    try:
        client.execute()
    except CellExecutionError as err:
        # The message holds the failing cell's source and its traceback; drop colour codes.
        error = _ANSI.sub("", str(err))
    else:
        return nb
    pytest.fail(f"{label} failed:\n{error}", pytrace=False)  # outside `except`: no chained copy


def stream_text(cell):
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def test_tutorials_exist():
    assert NOTEBOOKS, f"no notebooks found in {TUTORIALS}"


def test_kernel_runs_this_python(smoke_kernel):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import os, sys\n"
        "import manidefense\n"
        "print(sys.prefix)\n"
        "print(os.environ.get('MANIDEFENSE_SMOKE'))\n"
        "print(os.getcwd())"
    )])
    execute(nb, smoke_kernel, "kernel probe")
    prefix, smoke, cwd = stream_text(nb.cells[0]).splitlines()
    assert prefix == sys.prefix, f"kernel runs {prefix}, tests run {sys.prefix}"
    assert smoke == "1"
    assert Path(cwd).resolve() == TUTORIALS


@parametrize_notebooks
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL_NAME, \
        f"{path.name}: kernel must be {KERNEL_NAME!r}"
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    assert parameters[0].cell_type == "code"
    assert "MANIDEFENSE_SMOKE" in parameters[0].source, \
        f"{path.name}: the parameters cell must read MANIDEFENSE_SMOKE"
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@parametrize_notebooks
def test_notebook_runs_in_smoke_mode(path, smoke_kernel):
    nb = nbformat.read(path, as_version=4)
    execute(nb, smoke_kernel, path.name)
