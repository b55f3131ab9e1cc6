"""docs/quickstart.ipynb runs top to bottom (nbclient) in a kernel started from this interpreter: the venv's."""

from __future__ import annotations

import json
import re
import sys

import nbformat
from nbclient import NotebookClient

from tests.conftest import REPO


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    # A kernel spec naming this very interpreter, so the notebook runs against the project's .venv and not
    # whatever "python3" kernel the machine has; Jupyter's own paths kept inside tmp_path.
    spec = tmp_path / "jupyter" / "kernels" / "recsys-venv"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "recsys", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core warns about the old paths otherwise
    monkeypatch.setenv("MPLBACKEND", "Agg")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the notebook's mkdtemp: not one more folder in /tmp per run
    nb = nbformat.read(REPO / "docs" / "quickstart.ipynb", as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code")  # committed clean
    client = NotebookClient(
        nb, kernel_name="recsys-venv", timeout=180, resources={"metadata": {"path": str(REPO / "docs")}}
    )
    client.execute()  # raises CellExecutionError, with the cell and the traceback, if any cell fails

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs)  # the training curves
    tables = [out["data"]["text/html"] for out in outputs if "text/html" in out.get("data", {})]
    assert any("item_id" in table and "score" in table for table in tables)  # DataFrames of recommendations
    assert any("rating" in table and "baseline" in table for table in tables)  # predict, with the fallback
    printed = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    found = re.search(r"RMSE against the planted truth: model ([\d.]+), the mean ([\d.]+)", printed)
    assert found, printed
    assert float(found[1]) < 0.7 * float(found[2])  # the model predicts unseen pairs far better than the mean
