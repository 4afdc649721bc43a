"""Writes the Colab notebooks from these cell sources (the .ipynb files are generated; edit here).

  python notebooks/make_notebooks.py
"""

import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

# The project's public repository: the notebooks' badges and install cell, and pyproject's URLs.
REPO = "dispo-jax/dispo_jax"  # owner/name on GitHub

INSTALL = f"""\
# Installs dispo_jax from its repository in a fresh runtime (Colab), with the accelerator build of
# JAX when a GPU or TPU is attached; skipped when dispo_jax is already installed (as in the tests).
import importlib.util, os, shutil, subprocess, sys
if importlib.util.find_spec("dispo_jax") is None:
    accel = "cuda" if shutil.which("nvidia-smi") else "tpu" if os.path.exists("/dev/accel0") else ""
    url = os.environ.get("DISPO_JAX_REPO", "https://github.com/{REPO}")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                    f"dispo_jax{{'[' + accel + ']' if accel else ''}} @ git+{{url}}"], check=True)
    print("Installed. Restart the runtime now (Colab: Runtime > Restart session) so the new JAX "
          "is the one imported, then run all cells; this one is skipped from then on.")
"""
RUNTIME = """\
import os
import jax
backend = jax.default_backend()   # 'cpu', 'gpu' or 'tpu'
print(f"JAX {jax.__version__} on {backend}: {jax.device_count()} device(s) {jax.devices()[0].device_kind}")
# On CPU we keep everything tiny; on an accelerator the same cells run larger settings.
SMOKE = os.environ.get("DISPO_NOTEBOOK_SMOKE") == "1"   # the test suite runs a reduced setting
"""

def badge(name: str) -> str:
  return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
          f"(https://colab.research.google.com/github/{REPO}/blob/main/notebooks/{name})\n\n")


SAMPLER_CELLS = [
    ("markdown", badge("sampler_visualised.ipynb") + "# LLaDA's sampler, timestep by timestep\n\n"
     "**Run time**: about 2 minutes on a 2-core CPU (the tiny base's SFT), seconds on a GPU. Run "
     "the first cell, restart the runtime when it says so, then run all cells.\n\nA masked diffusion LM starts from a canvas of "
     "`[MASK]` tokens and commits a few tokens per timestep, most confident first, block by block. "
     "This notebook trains a tiny LLaDA on compact 4×4 Sudoku (LLaDA's SFT objective), then shows "
     "**which token is committed at which timestep** — the `commit_timestep` record that the jitted sampler "
     "returns — and the state canvases DiSPO branches from."),
    ("code", INSTALL),
    ("code", RUNTIME),
    ("code", """\
import numpy as np, matplotlib.pyplot as plt, jax.numpy as jnp
from dispo_jax import recipes, tiny_base, train
from dispo_jax.model import tokenizer as tok
from dispo_jax.sampling import SamplerSettings, generate
from dispo_jax.tasks import DataSettings, get_task

c = recipes.task_config("sudoku", "tiny")
c.base.steps = 40 if SMOKE else (300 if backend == "cpu" else 1500)
if SMOKE:
    c.model.overrides.d_model, c.model.overrides.n_layers = 32, 1
    c.data.num_train = 200
task = get_task("sudoku")
tokenizer, cfg, graphdef, state = tiny_base.prepare_base(train.base_spec(c))  # cached by its settings
train_rows, test_rows = task.tiny.rows(DataSettings(**c.data.to_dict()))
print(cfg)"""),
    ("code", """\
rows = test_rows[:4]
prompts = [tok.render_chat(task.tiny.prompt(r)) for r in rows]
tokens, lengths = tok.encode_prompts(tokenizer, prompts, c.rollout.max_prompt_length)
settings = SamplerSettings(gen_length=c.sampler.gen_length, block_length=c.sampler.gen_length // 2,
                           num_timesteps=8, temperature=0.0, mask_id=cfg.mask_token_id)
every_timestep = jnp.tile(jnp.arange(settings.num_timesteps)[None], (len(rows), 1))
rollout = generate(graphdef, state, jnp.asarray(tokens), jnp.asarray(lengths),
                   jax.random.key(0), settings, branch_timesteps=every_timestep)
commit = np.asarray(rollout.commit_timestep)
print("tokens committed per timestep:", settings.commits_per_timestep())"""),
    ("code", """\
fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.4 * len(rows)), squeeze=False)
for ax, row, timesteps, toks in zip(axes[:, 0], rows, commit, np.asarray(rollout.completion)):
    ax.imshow(timesteps[None], cmap="viridis", aspect="auto", vmin=0, vmax=settings.num_timesteps - 1)
    for i, t in enumerate(toks):
        ax.text(i, 0, tokenizer.decode([int(t)]), ha="center", va="center", color="w", fontsize=8)
    ax.set_yticks([]); ax.set_title(f"puzzle {row['puzzle']}  solution {row['solution']}", fontsize=9)
axes[-1, 0].set_xlabel("completion position (colour = timestep at which the token was committed)")
plt.tight_layout(); plt.show()"""),
    ("code", """\
# The state canvases x_t of row 0 (what DiSPO branches from): MASK shown as '·'.
for t in range(settings.num_timesteps):
    canvas = np.asarray(rollout.branch_canvas[0, t])
    text = "".join("·" if x == cfg.mask_token_id else tokenizer.decode([int(x)]) for x in canvas)
    print(f"t={t}: {text}")"""),
]

DISPO_CELLS = [
    ("markdown", badge("dispo_vs_diffu_grpo.ipynb") + "# DiSPO, trace and diffu-GRPO on tiny "
     "Sudoku\n\n**Run time**: about 35 minutes on a 2-core CPU (five training runs of 160 "
     "updates each), a few minutes on a GPU. Run the first cell, restart the runtime when it says "
     "so, then run all cells.\n\nAll methods use the same rollouts, the "
     "same number of optimizer steps and μ inner updates (matched updates). trace scores each "
     "completion token on the canvas where the sampler committed it (two segments: two forwards "
     "per update) instead of diffu-GRPO's fully masked completion. DiSPO adds a "
     "fixed-state term: at one intermediate state per trajectory (drawn from a late-biased ω(t)) "
     "it draws Z = 2 fillings of the masked cells from the cached logits, scores them with the "
     "same reward, and pushes up the better filling; DiSPO + trace (the main command's method, "
     "`python -m dispo_jax.train`) adds the same term to trace. The last run is the no-signal "
     "control: "
     "diffu-GRPO with the rewards shuffled within each prompt's group (same update size, no "
     "information). A method is learning only where it beats the control. See `docs/RESULTS.md` "
     "for the multi-seed study.\n\n**The testbed.** The tiny base is SFT'd on answers from a "
     "flawed demonstrator that writes a blank 4 as 1 in 60 % of its 4-cells (`data.sft_error`), "
     "so it fills 1, 2 and 3 cells right about 65 % of the time and never writes a 4 greedily. "
     "The reward pays only for the true digit: RL has a known error to unlearn, from rollouts that "
     "write a 4 about 9 % of the time. `experiments/digit_confusion.py` prints that table for the "
     "base or for a run's `export/`. The tiny config's RL settings (lr 1.5e-4, KL weight β 0.01 "
     "instead of d1's 0.04, which holds this small model at its base) are the ones the study in "
     "`docs/RESULTS.md` ran (160 updates = 40 rollout batches per run)."),
    ("code", INSTALL),
    ("code", RUNTIME),
    ("code", """\
import json
import tempfile
import numpy as np
import matplotlib.pyplot as plt
from dispo_jax import recipes, train

RUNS = {"diffu_grpo": ("diffu_grpo", False), "dispo": ("dispo", False), "trace": ("trace", False),
        "dispo_trace": ("dispo_trace", False),  # the main command's method
        "control": ("diffu_grpo", True)}   # name -> (method, shuffled rewards)

def config(name):
    c = recipes.task_config("sudoku", "tiny")
    c.method, c.shuffle_rewards = RUNS[name]
    if SMOKE:
        c.model.overrides.d_model, c.model.overrides.n_layers = 32, 1
        c.base.steps, c.num_steps, c.data.num_train, c.eval_rows = 40, 2, 200, 8
        c.rollout.prompts_per_batch, c.rollout.group_size, c.rl.num_iterations = 2, 4, 1
        c.eval_every, c.export_hf = 2, False
    return c

root = tempfile.mkdtemp(prefix="dispo_notebook_smoke_") if SMOKE else "/tmp/dispo_notebook_compare"
runs = {}
for name in RUNS:
    workdir = f"{root}/{name}"
    train.train(config(name), workdir)   # the SFT'd base is trained once and cached
    runs[name] = [json.loads(l) for l in open(f"{workdir}/metrics.jsonl")]"""),
    ("code", """\
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.5))
for method, rows in runs.items():
    steps = [r["step"] for r in rows if "reward_mean" in r]
    a.plot(steps, [r["reward_mean"] for r in rows if "reward_mean" in r], label=method)
    ev = [(r["step"], r["eval/accuracy"]) for r in rows if "eval/accuracy" in r]
    b.plot(*zip(*ev), marker="o", label=method)
a.set(xlabel="optimizer step", ylabel="rollout reward", title="training reward")
b.set(xlabel="optimizer step", ylabel="held-out cell accuracy", title="greedy evaluation")
a.legend(); b.legend(); plt.tight_layout(); plt.show()

# The runs draw the same prompts at every step, so subtracting the control's rollout reward step by
# step removes prompt difficulty, the largest source of noise in the curves above.
control = {r["step"]: r["reward_mean"] for r in runs["control"] if "reward_mean" in r}
for name in ("diffu_grpo", "dispo", "trace", "dispo_trace"):
    diff = [r["reward_mean"] - control[r["step"]] for r in runs[name] if "reward_mean" in r]
    print(f"{name}: rollout reward − control, mean over steps = {np.mean(diff):+.3f}")"""),
    ("code", """\
# DiSPO's diagnostics: how often do the Z = 2 branches of a state get different rewards, by timestep bin?
for run in ("dispo", "dispo_trace"):
    rows = [r for r in runs[run] if "state/distinguishable_frac" in r]
    for name in ("early", "mid", "late"):
        vals = [r[f"state/distinguishable_{name}"] for r in rows if r.get(f"state/states_{name}", 0) > 0]
        print(f"{run} {name:5s}: {sum(vals) / len(vals):.3f} over {len(vals)} steps" if vals
              else f"{run} {name:5s}: no states")

# Where each run's credit came from (the line `python -m dispo_jax.train` prints at the end): groups
# whose K rewards tie give the terminal term nothing; DiSPO's term credits the tokens of its branches.
for name, rows in runs.items():
    print(f"{name}: {train.credit_line(rows)}")"""),
]


NOTEBOOKS = {"sampler_visualised.ipynb": SAMPLER_CELLS, "dispo_vs_diffu_grpo.ipynb": DISPO_CELLS}


def render(cells) -> str:
  """The notebook's JSON text; cell ids are numbered so that rewriting changes nothing."""
  nb = nbformat.v4.new_notebook()
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  nb.metadata["colab"] = {"provenance": []}
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown"
              else nbformat.v4.new_code_cell(src) for kind, src in cells]
  for i, cell in enumerate(nb.cells):
    cell.id = f"cell-{i}"
  return nbformat.writes(nb) + "\n"


if __name__ == "__main__":
  for name, cells in NOTEBOOKS.items():
    with open(os.path.join(HERE, name), "w") as f:
      f.write(render(cells))
