"""The Colab notebooks execute end to end on a reduced setting (so they cannot rot)."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", ["sampler_visualised.ipynb", "dispo_vs_diffu_grpo.ipynb"])
def test_notebook_runs(name, monkeypatch):
  monkeypatch.setenv("DISPO_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("MPLBACKEND", "Agg")
  monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": REPO}})
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]


def test_committed_notebooks_are_what_the_generator_writes():
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "make_notebooks", os.path.join(REPO, "notebooks", "make_notebooks.py"))
  generator = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(generator)
  for name, cells in generator.NOTEBOOKS.items():
    with open(os.path.join(REPO, "notebooks", name)) as f:
      assert f.read() == generator.render(cells), f"notebooks/{name}: rerun make_notebooks.py"
