"""Both notebooks execute headless (small sizes) and produce their figures and checks; they use
only the installed package (no sys.path edits)."""

import os
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _execute(name):
    path = os.path.join(ROOT, "notebooks", name)
    notebook = nbformat.read(path, as_version=4)
    assert not any("sys.path" in cell.source for cell in notebook.cells)
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}},
    )
    client.execute()
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    errors = [output for output in outputs if output.get("output_type") == "error"]
    assert not errors
    text = "".join(output.get("text", "") for output in outputs)
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    return text, images


def test_samplers_notebook_executes():
    text, images = _execute("samplers.ipynb")
    assert "deterministic" in text
    assert len(images) >= 2, "the notebook should plot error vs NFE and 2-D trajectories"


def test_quickstart_notebook_executes_and_its_gradient_check_agrees():
    text, images = _execute("quickstart.ipynb")
    assert "finite: True" in text and images
    relative = float(re.search(r"relative difference ([0-9.e+-]+)", text).group(1))
    assert relative < 1e-3, text
