"""notebooks/quickstart.ipynb runs end to end on a tiny synthetic set, in this venv's python, offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"

# Runs first in the kernel: refuse every connection and name lookup that is not local (the kernel is another
# process, so conftest's guard does not reach it), and report which python runs the kernel.
GUARD = f"""
import sys
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
import network_guard
network_guard.install("the notebook")
print("KERNEL_PREFIX", sys.prefix)
"""


def _parameters(work: Path) -> str:
    return f"""
import matplotlib
matplotlib.use("Agg")
DATA, WORK = None, {str(work)!r}
N_TRAIN, N_TEST = 40, 10
ARCH, SIZE, EPOCHS, BS, LR = "test_efficientnet", 64, 1, 8, 1e-2
LR_FIND_ITERS = 25  # fastai's valley needs enough points after it drops the first tenth and last five
WORKERS = 0
"""


def test_quickstart_notebook_runs_and_writes_a_submission(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    root = str(NOTEBOOK.parents[1])  # the kernel imports this checkout's seti_fastai
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    work = tmp_path / "work"
    nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell(_parameters(work)))  # papermill's injection, by hand
    nb.cells.insert(0, nbformat.v4.new_code_cell(GUARD))

    # per-cell limit: a few seconds on an idle 2-core CPU, minutes when the machine is shared (a timeout is no verdict)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=1800, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()

    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert f"KERNEL_PREFIX {sys.prefix}" in printed, f"the kernel is not this venv's python: {printed!r}"
    submission = pd.read_csv(work / "submission.csv", dtype={"id": str})
    sample = pd.read_csv(work / "data" / "sample_submission.csv", dtype={"id": str})
    assert submission["id"].tolist() == sample["id"].tolist() and len(submission) == 10
    assert submission["target"].between(0, 1).all()
    assert not [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
