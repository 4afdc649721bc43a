"""A non-editable install in a fresh venv works from any folder: the console scripts, the
recipes by name, a few tiny training steps and the evaluation of their export."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from tests.helpers import REPO, tiny_flags

# What a wheel is built from (the package and its metadata; nothing else of the clone).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "dispo_jax")


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """A fresh venv with dispo_jax installed from a built wheel (not editable); its dependencies
  come from this test environment's site-packages, added as a path (a ``.pth`` line, so this
  environment's own editable dispo_jax is not seen)."""
  root = tmp_path_factory.mktemp("install")
  source = root / "src"
  source.mkdir()
  for name in SOURCES:
    src = os.path.join(REPO, name)
    (shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
     if os.path.isdir(src) else shutil.copy(src, source / name))
  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
  site = subprocess.run([str(venv / "bin" / "python"), "-c",
                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                        check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(site, "deps.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                  "--no-build-isolation", str(source)], check=True, capture_output=True)
  return venv


def _run(venv, args, cwd, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
  return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_installed_package_is_the_wheel_not_the_clone(installed, tmp_path):
  out = _run(installed, ["python", "-c", "import dispo_jax; print(dispo_jax.__file__)"], tmp_path)
  assert out.returncode == 0, out.stderr[-2000:]
  assert str(installed) in out.stdout and REPO not in out.stdout
  assert _run(installed, ["python", "-c", "import configs"], tmp_path).returncode != 0


def test_console_scripts_train_and_evaluate_from_any_folder(installed, tmp_path):
  help_text = _run(installed, ["dispo-train", "--help"], tmp_path)
  assert "--config" in help_text.stdout and "dispo_jax.train" in help_text.stdout  # absl exits 1
  assert "sections: base, data" in " ".join(help_text.stdout.split())
  workdir = tmp_path / "run"
  flags = {**tiny_flags(), "num_steps": 2, "rl.num_iterations": 1, "export_hf": True,
           "eval_every": 2}
  train = _run(installed, ["dispo-train", "--config=sudoku:tiny", f"--workdir={workdir}"]
               + [f"--config.{k}={v}" for k, v in flags.items()], tmp_path)
  assert train.returncode == 0, train.stderr[-3000:]
  assert f"work folder: {workdir}" in train.stdout
  assert f"tensorboard --logdir {workdir}/tensorboard" in train.stdout
  assert f"HF export:   {workdir}/export" in train.stdout
  evaluation = _run(installed, ["dispo-evaluate", f"--workdir={tmp_path / 'eval'}",
                                f"--config.checkpoint={workdir}/export"], tmp_path)
  assert evaluation.returncode == 0, evaluation.stderr[-3000:]
  assert "sudoku" in evaluation.stdout and (tmp_path / "eval" / "metrics.json").exists()


def test_readme_commands_use_the_tested_set_and_ci_runs_the_test_command():
  readme = open(os.path.join(REPO, "README.md")).read()
  ci = open(os.path.join(REPO, ".ci", "run")).read()
  assert "pip install -c constraints.txt -e . && python -m dispo_jax.train" in readme
  test_command = "pip install -c constraints.txt -e '.[test,torch]' && python -m pytest -q"
  assert test_command in readme
  assert "-c constraints.txt -e '.[test,torch]' && python -m pytest -q" in ci


def test_the_constraints_satisfy_the_declared_ranges():
  """Every exact version in constraints.txt lies inside pyproject.toml's range for it, so the
  tested set is one of the sets the package declares it works with."""
  import tomllib
  from packaging.requirements import Requirement
  project = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]
  declared = {}
  for spec in project["dependencies"] + sum(project["optional-dependencies"].values(), []):
    req = Requirement(spec)
    declared.setdefault(req.name.lower().replace("_", "-"), []).append(req.specifier)
  pins = [line.split("==") for line in open(os.path.join(REPO, "constraints.txt"))
          if line.strip() and not line.startswith("#")]
  assert len(pins) > 20
  for name, version in pins:
    key = name.strip().lower().replace("_", "-")
    assert key in declared, f"constraints.txt pins {name}, which pyproject.toml never names"
    for specifier in declared[key]:
      assert specifier.contains(version.strip()), (name, version, str(specifier))
