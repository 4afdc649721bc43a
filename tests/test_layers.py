"""The package's layers, checked on its import statements (nested imports included):
``model`` ← ``sampling`` ← ``rl`` ← ``pipeline``; ``tasks`` beside them; the run's infrastructure
(``run/``) never imports ``pipeline/`` nor any of ``rl/`` but the state it saves."""

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dispo_jax")
SHARED = {"dispo_jax", "dispo_jax.checks", "dispo_jax.registry"}  # version, checks, registries
ALLOWED = {
    "model": {"model"},
    "sampling": {"model", "sampling"},
    "rl": {"model", "sampling", "rl"},
    "pipeline": {"model", "sampling", "rl", "pipeline"},
    "tasks": {"tasks"},
    "run": {"run", "model", "rl.state", "recipes"},
}


def imported_modules(path: str) -> set[str]:
  """Every ``dispo_jax...`` module a file imports (``from dispo_jax.x import y`` -> ``x.y`` when
  ``y`` is a module of the package, else ``x``)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("dispo_jax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dispo_jax"):
      for alias in node.names:
        name = f"{node.module}.{alias.name}"
        as_module = os.path.join(ROOT, *name.split(".")[1:])
        found.add(name if os.path.exists(as_module + ".py") or os.path.isdir(as_module)
                  else node.module)
  return found


def _files(package: str):
  for folder, _, names in os.walk(os.path.join(ROOT, package)):
    yield from (os.path.join(folder, n) for n in names if n.endswith(".py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(package):
  allowed = {f"dispo_jax.{p}" for p in ALLOWED[package]}
  for path in _files(package):
    for module in imported_modules(path) - SHARED:
      assert any(module == a or module.startswith(a + ".") for a in allowed), (
          f"{os.path.relpath(path, ROOT)} imports {module}")


def test_the_rule_check_sees_a_violation(tmp_path):
  bad = tmp_path / "bad.py"
  bad.write_text("def f():\n  from dispo_jax.pipeline.step import rollout_and_update\n"
                 "from dispo_jax.rl import learner\n")
  assert imported_modules(str(bad)) == {"dispo_jax.pipeline.step", "dispo_jax.rl.learner"}


# The modules that read a run's ConfigDict: the CLIs, the recipes that build it, and the run
# record (config.json, the folder's name). Everything else receives settings dataclasses.
CONFIG_READERS = {"train.py", "evaluate.py", "plan_scale.py", "recipes.py",
                  os.path.join("run", "workdir.py")}


def test_nothing_below_the_clis_receives_a_config_dict():
  """No function outside :data:`CONFIG_READERS` takes a parameter named ``c`` or an unannotated
  ``config``, or one annotated as a ``ConfigDict``."""
  offenders = []
  for path in _files(""):
    if os.path.relpath(path, ROOT) in CONFIG_READERS:
      continue
    for node in ast.walk(ast.parse(open(path).read())):
      if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        continue
      for arg in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
        annotation = ast.unparse(arg.annotation) if arg.annotation else ""
        if (arg.arg == "c" or (arg.arg == "config" and not annotation)
            or "ConfigDict" in annotation):
          offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}({arg.arg})")
  assert not offenders, offenders
