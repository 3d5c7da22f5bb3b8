"""The notebooks in notebooks/: stored without outputs, and each runs top to bottom.

Each notebook ends with asserts on the physics (the ledger sums to GPUs x time, the simulated
checkpoint optimum is Daly's, FP8 serves more tokens per GPU than BF16, the break-even
utilisation lies in (0, 1)), so executing it checks something. The kernel is the interpreter
running the tests (a kernelspec written to a temporary JUPYTER_PATH, checked from inside the
kernel), and it runs in a temporary folder, so nothing is written into the repository.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
#: Wall-clock budget per notebook; they aim at well under a minute on two cores.
TIMEOUT_S = 180

nbformat = pytest.importorskip(
    "nbformat", reason="nbformat is not installed (pip install -e '.[test]')")


def test_the_notebooks_are_there() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"01-quickstart.ipynb", "02-checkpointing-at-scale.ipynb", "03-serving.ipynb",
            "04-build-or-rent.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path: Path) -> None:
    """Outputs belong to whoever runs a notebook, not to the repository: clear them before
    committing (Jupyter: Edit > Clear Outputs of All Cells; or `jupyter nbconvert
    --clear-output --inplace`)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: cell {i} has stored outputs"
            assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment under which 'python3' is a kernel running this interpreter."""
    pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")
    kernelspec = pytest.importorskip(
        "ipykernel.kernelspec", reason="ipykernel is not installed (pip install -e '.[test]')")
    prefix = tmp_path_factory.mktemp("jupyter")
    # a kernelspec whose argv[0] is sys.executable, found first through JUPYTER_PATH
    kernelspec.install(kernel_name="python3", prefix=str(prefix))
    return {
        "JUPYTER_PATH": str(prefix / "share" / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(prefix / "runtime"),
        "IPYTHONDIR": str(prefix / "ipython"),
        "MPLBACKEND": "Agg",
    }


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom(path: Path, kernel_env: dict[str, str], tmp_path: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    for key, value in kernel_env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(path, as_version=4)
    # a last cell that reports which interpreter the kernel ran
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print(sys.prefix)"))
    client = NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    wall_s = time.perf_counter() - start
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert printed == sys.prefix, f"kernel ran in {printed!r}, not in {sys.prefix!r}"
    assert wall_s < TIMEOUT_S, f"{path.name} took {wall_s:.0f} s"
    assert list(tmp_path.iterdir()) == [], "the notebook wrote files into its working folder"
