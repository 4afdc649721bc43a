"""The Colab notebooks execute end to end on a reduced setting (so they cannot rot), as a user
runs them: from a folder outside the repository, with only the installed package importable."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from tests.helpers import REPO


@pytest.mark.parametrize("name", ["sampler_visualised.ipynb", "dispo_vs_diffu_grpo.ipynb"])
def test_notebook_runs(name, monkeypatch, tmp_path):
  monkeypatch.setenv("DISPO_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.delenv("PYTHONPATH", raising=False)  # the repository is not on the kernel's path
  nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  errors = [o for o in outputs if o.get("output_type") == "error"]
  assert not errors, errors[0].get("ename", "") + ": " + errors[0].get("evalue", "")
  assert not [c for c in nb.cells if "from configs" in c.source]  # no import from the clone


def test_notebooks_open_in_colab_and_say_their_run_time():
  for name in ("sampler_visualised.ipynb", "dispo_vs_diffu_grpo.ipynb"):
    nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
    first = nb.cells[0].source
    assert "colab.research.google.com/github/" in first and f"notebooks/{name}" in first
    assert "**Run time**" in first and "Restart" in nb.cells[1].source


def test_committed_notebooks_are_what_the_generator_writes():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "make_notebooks", os.path.join(REPO, "notebooks", "make_notebooks.py"))
  generator = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(generator)
  for name, cells in generator.NOTEBOOKS.items():
    with open(os.path.join(REPO, "notebooks", name)) as f:
      assert f.read() == generator.render(cells), f"notebooks/{name}: rerun make_notebooks.py"
