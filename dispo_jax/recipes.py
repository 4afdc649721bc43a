"""The paper's LLaDA-8B recipe (d1 diffu-GRPO + DiSPO, arXiv 2602.06462 App. D) as one table of
hyperparameters, the per-task differences, the tiny CPU variant and d1's evaluation protocol.

``get_config("sudoku", "tiny")`` is what ``--config=sudoku:tiny`` (the CLIs' default) and
``--config=configs/sudoku.py:tiny`` (the clone's config files, which call this) both load, so a
config works from any directory and from a non-editable install. docs/METHOD.md §2 explains the
recipe; each section maps one to one onto a settings dataclass (named in its comment).
"""

from __future__ import annotations

import dataclasses

import ml_collections


def _model_section() -> ml_collections.ConfigDict:
  """The HF checkpoint (or the tiny preset), dtypes and rematerialisation."""
  s = ml_collections.ConfigDict()
  s.checkpoint = ""        # HF LLaDA folder (GSAI-ML/LLaDA-8B-Instruct); required here
  s.tokenizer = ""         # default: the checkpoint folder
  s.preset = ""            # "tiny": the CPU setting's model, SFT'd here (no checkpoint)
  s.overrides = ml_collections.ConfigDict()
  s.param_dtype = "bfloat16"
  s.compute_dtype = "bfloat16"
  s.remat = True
  return s


def _lora_section() -> ml_collections.ConfigDict:
  """LoRA on q/k/v/up as separate parameters (d1's targets as matched in LLaDA)."""
  s = ml_collections.ConfigDict()  # enabled + dispo_jax.model.config.LoRAConfig
  s.enabled = True
  s.rank = 128
  s.alpha = 64.0
  s.dropout = 0.05
  s.targets = ("q_proj", "k_proj", "v_proj", "up_proj")
  return s


def _optim_section() -> ml_collections.ConfigDict:
  """AdamW as d1 ran it."""
  s = ml_collections.ConfigDict()  # dispo_jax.rl.optimizer.OptimizerSettings
  s.learning_rate = 3e-6
  s.b1 = 0.9
  s.b2 = 0.99
  s.weight_decay = 0.1
  s.grad_clip = 0.2
  s.warmup_steps = 0
  return s


def _sampler_section() -> ml_collections.ConfigDict:
  """LLaDA's low-confidence remasking sampler; Fast-dLLM's cache and threshold as options."""
  s = ml_collections.ConfigDict()  # dispo_jax.sampling.SamplerSettings (mask_id: the model's)
  s.gen_length = 256
  s.block_length = 32
  s.num_timesteps = 128
  s.temperature = 0.9
  s.remasking = "low_confidence"
  s.cfg_scale = 0.0
  s.mask_padding = True
  s.cache_top_k = ml_collections.config_dict.placeholder(int)  # None: full-vocabulary logits at branch states
  s.allow_mask_action = False
  s.kv_cache = "none"    # none | dual (Fast-dLLM's approximate block cache; rollouts only)
  s.threshold = ml_collections.config_dict.placeholder(float)  # parallel decoding (None: off)
  s.threshold_rule = "fast_dllm"  # fast_dllm (top-1 + all >= threshold) | schedule_plus (k_t + all above)
  return s


def _rollout_section() -> ml_collections.ConfigDict:
  """Prompts and completions per rollout batch; DiSPO's branch states and their advantages."""
  s = ml_collections.ConfigDict()  # dispo_jax.pipeline.RolloutSettings
  s.prompts_per_batch = 16
  s.group_size = 6
  s.max_prompt_length = 200
  s.num_branches = 2     # Z
  s.states_per_prompt = 1  # |T_sub|
  s.timestep_schedule = "late"
  s.timestep_degree = 4.0
  s.branch_temperature = ml_collections.config_dict.placeholder(float)  # None: the sampler's
  s.terminal_advantage = "mean"
  s.branch_advantage = "mean"  # mean (paper) | leave_one_out (unbiased)
  s.reward_text = "whole"  # whole (d1: every non-special token) | first_eos
  return s


def _rl_section() -> ml_collections.ConfigDict:
  """The objective: clipping, KL, the two terms' weights and normalisers; SPG, trace and the
  behaviour-policy weight."""
  s = ml_collections.ConfigDict()  # dispo_jax.rl.learner.ObjectiveSettings (method: c.method)
  s.num_iterations = 8        # μ: optimizer updates per rollout batch
  s.num_microbatches = 1
  s.base_loss = ""            # "" = the method's registered base loss
  s.epsilon_low = 0.5
  s.epsilon_high = 0.5
  s.beta = 0.04
  s.p_mask_prompt = 0.15
  s.alpha_base = 1.0
  s.alpha_state = 0.5
  s.state_normaliser = "branch"  # branch (App. J) | group | tokens | nonzero_tokens | sum
  s.base_normaliser = "group"  # group (d1 as run: token mean per prompt group, mean over groups) | batch
  s.state_ratio = "token"      # token | branch (Eq. 5: one clipped ratio per branch)
  s.state_tokens = "action"    # action (up to the branch's EOS) | action_with_tail | all (Table 3a ablation)
  s.spg = ml_collections.ConfigDict()  # dispo_jax.rl.objectives.spg.SPGSettings (method spg | dispo_spg)
  s.spg.num_masks = 2         # m, Monte Carlo mask samples per completion
  s.spg.block_length = 32
  s.spg.negative_bound = "mix"  # mix | eubo | elbo | none (negative-advantage completions)
  s.spg.mix_weight = 0.5      # ω of mix = ω·EUBO + (1−ω)·ELBO
  s.spg.eubo_beta = 1.5
  s.spg.block_choice = "spg"  # spg (SPG's trainer: randperm(num_blocks) % covered) | cycled
  s.trace = ml_collections.ConfigDict()  # dispo_jax.rl.objectives.trace.TraceSettings (trace | dispo_trace)
  s.trace.segments = 16       # N segments of the T timesteps (N = T: each token on its timestep's logits; N = 1 = diffu-GRPO's)
  s.trace.temperature = 1.0   # score log softmax(logits / τ): 1 = the model's; the sampler's τ = what the rollout drew from
  s.behaviour = ml_collections.ConfigDict()  # dispo_jax.rl.behaviour.BehaviourSettings
  s.behaviour.weight = "auto"  # auto (token with kv_cache=dual or a threshold, else none) | none | token | sequence
  s.behaviour.cap = 2.0       # C of the truncated weight min(π_old / π_behaviour, C)
  return s


def _data_section() -> ml_collections.ConfigDict:
  """Dataset files, or the tiny setting's generated rows."""
  s = ml_collections.ConfigDict()
  s.train_file = ""         # local HF-format file (GSM8K, MATH, Countdown); Sudoku: d1 CSV
  s.eval_file = ""
  s.num_train = 4000        # tiny setting: generated puzzles
  s.num_test = 256
  s.test_fraction = 0.2
  s.rl_grid_fraction = 0.0  # tiny Sudoku: >0 sets this fraction of held-out grids aside for RL
  s.num_test_grids = 0      # tiny Sudoku: >0 keeps this many test grids (random subset)
  s.rl_on_test_grids = False  # tiny Sudoku: RL puzzles on the (never SFT'd) test grids, none a test puzzle
  s.num_blanks = (6, 10)
  s.countdown_numbers = (1, 99)  # tiny Countdown: (smallest, largest) number of a problem
  s.unique_solutions = True  # tiny Sudoku: False admits puzzles with several solutions
  s.sft_error = "next_digit"  # tiny Sudoku: the SFT demonstrator's error: next_digit | next_digit_per_answer | four_as_one
  s.sft_error_rate = 0.0     # ... made at this rate (0: exact demonstrations)
  s.seed = 0                # data generation and the grid split (independent of c.seed)
  s.few_shot = 0            # Sudoku with a checkpoint: worked examples in the prompt (SPG: 3)
  return s


def _base_section() -> ml_collections.ConfigDict:
  """The tiny setting's SFT'd base."""
  s = ml_collections.ConfigDict()  # tiny setting: SFT of the base model
  s.steps = 0
  s.batch_size = 64
  s.learning_rate = 3e-3
  s.cache_dir = ""          # trained tiny bases, keyed by their settings ("" = ~/.cache/dispo_jax)
  return s


def base_config() -> ml_collections.ConfigDict:
  """The LLaDA-8B recipe: run keys, then one section per settings dataclass."""
  c = ml_collections.ConfigDict()
  c.task = "sudoku"
  c.method = "dispo"             # diffu_grpo | dispo | spg | dispo_spg | trace | dispo_trace
  c.d1_compat = True             # d1's reward functions exactly (App. D.1); False: corrected rewards
  c.reward = "default"           # d1's reward | sudoku: solved (1 only for a solved puzzle)
  c.seed = 0
  c.num_steps = 3800             # optimizer updates (d1: Sudoku 3800, Countdown 5000, GSM8K 7700, MATH 6600);
                                 # a new rollout batch every rl.num_iterations updates, as d1 (TRL)
  c.max_steps = -1               # >0 caps this run, a multiple of rl.num_iterations (the schedule still uses num_steps)

  c.model = _model_section()
  c.lora = _lora_section()
  c.optim = _optim_section()
  c.sampler = _sampler_section()
  c.rollout = _rollout_section()
  c.rl = _rl_section()
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.data = _data_section()
  c.base = _base_section()

  c.checkpoint_every = 96         # optimizer updates; a multiple of rl.num_iterations (8 and 12)
  c.keep_checkpoints = 3
  c.eval_every = 200
  c.eval_rows = 256
  c.max_bad_steps = 5            # consecutive non-finite updates before the run stops
  c.shuffle_rewards = False      # control run: rewards permuted within each prompt's group
  c.export_hf = True
  c.wandb_project = ""           # Weights & Biases project beside TensorBoard ("" = off; the wandb extra)
  c.distributed_timeout_s = 300  # multi-host: how long to wait for the coordinator
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU setting: a tiny LLaDA SFT'd here on compact Sudoku, full fine-tuning, fp32."""
  c.model.checkpoint = ""
  c.model.preset = "tiny"
  c.model.overrides = ml_collections.ConfigDict({"d_model": 128, "n_layers": 4, "n_heads": 4,
                                                 "mlp_hidden_size": 384})
  c.model.param_dtype = "float32"
  c.model.compute_dtype = "float32"
  c.model.remat = False
  c.lora.enabled = False
  c.method = "dispo_trace"       # DiSPO's state term on trace (docs/RESULTS.md: ties trace over 5 seeds)
  c.optim.learning_rate = 1.5e-4
  c.optim.grad_clip = 1.0
  c.rollout.prompts_per_batch = 8
  c.rollout.group_size = 8
  c.sampler.gen_length = 24
  c.sampler.block_length = 24
  c.sampler.num_timesteps = 6
  c.rl.trace.segments = 2        # two forwards per update (N = T = 6 is exact and ~3x dearer)
  c.rollout.max_prompt_length = 32
  c.sampler.temperature = 0.9
  c.rl.num_iterations = 4
  c.rl.base_normaliser = "batch"  # the project's studies so far used the global token mean
  c.rl.state_normaliser = "tokens"  # and the global token mean of the state term
  c.rl.beta = 0.01               # d1's 0.04 holds this tiny model at the base (RESULTS: "The KL weight was the brake")
  c.d1_compat = False            # the corrected rewards (GSM8K DOTALL, MATH "\\boxed" check)
  c.num_steps = 160              # optimizer updates: 40 rollout batches × μ = 4
  # The testbed (docs/RESULTS.md, "A testbed where RL has something to learn"): the base imitates
  # a flawed demonstrator that writes a blank 4 as 1 in 60 % of its answers' 4-cells. After 800 SFT
  # steps it fills 1, 2 and 3 cells right ~65 % of the time and never writes a 4 greedily
  # (held-out greedy cell accuracy 0.499 at 6 timesteps); the reward pays only for the true digit.
  c.base.steps = 800
  c.data.sft_error = "four_as_one"
  c.data.sft_error_rate = 0.6
  c.checkpoint_every = 80
  c.eval_every = 80
  c.eval_rows = 256
  return c


def spg_objective(c: ml_collections.ConfigDict, method: str,
                  eubo_beta: float = 1.5) -> ml_collections.ConfigDict:
  """SPG's objective settings (method spg | dispo_spg): no KL, μ = 4, m = 2 block masks, mix ω 0.5."""
  c.method = method
  c.rl.beta = 0.0
  c.rl.num_iterations = 4
  c.rl.spg.num_masks = 2
  c.rl.spg.block_length = 32
  c.rl.spg.negative_bound = "mix"
  c.rl.spg.mix_weight = 0.5
  c.rl.spg.eubo_beta = eubo_beta
  return c


def spg_recipe(c: ml_collections.ConfigDict, method: str, num_steps: int, eubo_beta: float = 1.5,
               temperature: float = 0.9) -> ml_collections.ConfigDict:
  """SPG's LLaDA-8B recipe: lr 3e-6, 16 prompts × 6, 256 tokens in 128 timesteps with 32-token blocks;
  ``num_steps`` optimizer updates at sampling temperature ``temperature``."""
  c = spg_objective(c, method, eubo_beta)
  c.num_steps = num_steps
  c.optim.learning_rate = 3e-6
  c.rollout.prompts_per_batch = 16
  c.rollout.group_size = 6
  c.sampler.gen_length = 256
  c.sampler.block_length = 32
  c.sampler.num_timesteps = 128
  c.sampler.temperature = temperature
  return c


def with_variants(c: ml_collections.ConfigDict, arg: str, *, spg_steps: int, spg_repo_steps: int,
                  spg_eubo_beta: float = 1.5, spg_repo_temperature: float = 0.9,
                  extra: dict | None = None) -> ml_collections.ConfigDict:
  """Applies the comma-separated variants of ``--config=configs/<task>.py:<variants>``.

  ``tiny``: the CPU setting. ``spg`` / ``dispo_spg``: SPG's objective with the recipe the DiSPO
  paper ran it with (App. D.3: in d1's codebase, ``spg_steps`` updates, d1's temperature 0.9);
  adding ``spg_repo`` takes SPG's own repository's run instead (``spg_repo_steps`` updates, its
  per-task temperature). With ``tiny`` only the objective changes (the tiny rollout and learning
  rate stay). ``extra`` maps task-specific variant names to functions of the config.
  """
  task = c.task
  variants = [v for v in arg.split(",") if v]
  known = {"tiny", "spg", "dispo_spg", "spg_repo", *(extra or {})}
  for v in variants:
    if v not in known:
      raise ValueError(f"unknown config variant {v!r}; use a comma-separated subset of "
                       f"{sorted(known)}")
  if "spg" in variants and "dispo_spg" in variants:
    raise ValueError("config variants 'spg' and 'dispo_spg' exclude each other")
  if "spg_repo" in variants and not {"spg", "dispo_spg"} & set(variants):
    raise ValueError("config variant 'spg_repo' modifies 'spg' or 'dispo_spg'; add one of them")
  if "tiny" in variants:
    c = tiny(c)
    c.task = task
  repo = "spg_repo" in variants
  for method in ("spg", "dispo_spg"):
    if method in variants:
      c = (spg_objective(c, method, spg_eubo_beta) if "tiny" in variants else
           spg_recipe(c, method, spg_repo_steps if repo else spg_steps, spg_eubo_beta,
                      spg_repo_temperature if repo else 0.9))
  for v in variants:
    if v in (extra or {}):
      c = extra[v](c)
  return c


# ----------------------------------------------------------------------------------------------
# The tasks: what differs from the shared table
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TaskRecipe:
  """One task's departures from :func:`base_config` (d1's run.sh and the DiSPO paper, App. D/J).

  Attributes:
    num_steps: optimizer updates of the d1 run.
    num_iterations: μ, updates per rollout batch.
    spg_steps: updates of SPG's run as the DiSPO paper ran it (App. D.3).
    spg_repo_steps: updates of SPG's own repository's run.
    spg_eubo_beta: SPG's EUBO β.
    spg_repo_temperature: SPG's repository's sampling temperature.
  """

  num_steps: int
  num_iterations: int
  spg_steps: int
  spg_repo_steps: int
  spg_eubo_beta: float = 1.5
  spg_repo_temperature: float = 0.9


TASKS = {
    # μ 12: App. J and d1's run.sh (its sbatch file uses 8).
    "sudoku": TaskRecipe(num_steps=3800, num_iterations=12, spg_steps=4000, spg_repo_steps=2500,
                         spg_eubo_beta=1.0, spg_repo_temperature=0.3),
    "countdown": TaskRecipe(num_steps=5000, num_iterations=8, spg_steps=4600, spg_repo_steps=6000),
    "gsm8k": TaskRecipe(num_steps=7700, num_iterations=12, spg_steps=4600, spg_repo_steps=6000),
    "math500": TaskRecipe(num_steps=6600, num_iterations=12, spg_steps=2600, spg_repo_steps=4000),
}


def three_shot(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """SPG's Sudoku prompts: three worked examples before the question (checkpoint runs only)."""
  c.data.few_shot = 3
  c.rollout.max_prompt_length = 1500
  return c


TASK_VARIANTS = {"sudoku": {"3shot": three_shot}}


def task_config(task: str, arg: str = "") -> ml_collections.ConfigDict:
  """The training config of ``task`` with the comma-separated variants ``arg`` (see
  :func:`with_variants`); ``ValueError`` naming the task or variant otherwise."""
  if task not in TASKS:
    raise ValueError(f"unknown task recipe {task!r}; one of {sorted(TASKS)}")
  r = TASKS[task]
  c = base_config()
  c.task = task
  c.num_steps = r.num_steps
  c.rl.num_iterations = r.num_iterations
  return with_variants(c, arg, spg_steps=r.spg_steps, spg_repo_steps=r.spg_repo_steps,
                       spg_eubo_beta=r.spg_eubo_beta, spg_repo_temperature=r.spg_repo_temperature,
                       extra=TASK_VARIANTS.get(task))


# ----------------------------------------------------------------------------------------------
# d1's evaluation protocol
# ----------------------------------------------------------------------------------------------


def eval_config(arg: str = "") -> ml_collections.ConfigDict:
  """d1's evaluation: greedy, timesteps = gen_length / 2, block 32, gen lengths 128 / 256 / 512.
  ``arg="tiny"``: a smoke-test subset."""
  if arg not in ("", "tiny"):
    raise ValueError(f"unknown eval config variant {arg!r}; use '' or 'tiny'")
  c = ml_collections.ConfigDict()
  c.checkpoint = ""          # HF LLaDA folder (config.json + safetensors) or an exported run
  c.tokenizer = ""           # default: the checkpoint folder
  c.prompt_format = "auto"   # auto (a tiny run's export: its prompts, rows, sampler; else d1) | d1 | tiny
  c.param_dtype = ""         # "" = the checkpoint's torch_dtype
  c.compute_dtype = ""
  c.tasks = "sudoku,countdown,gsm8k,math500"
  c.data_files = ml_collections.ConfigDict({"gsm8k": "", "math500": ""})  # local HF-format files
  c.gen_lengths = (128, 256, 512)
  c.block_length = 32
  c.batch_size = 8
  c.max_prompt_length = 512
  c.eval_size = -1           # -1: d1's sizes (Sudoku 256, Countdown 256, GSM8K 1319, MATH500 500)
  c.limit = 0                # >0: only the first rows of the subset (smoke tests)
  c.seed = 42                # d1's subsampling seed
  c.d1_compat = False
  c.mask_padding = True
  c.sudoku_few_shot = 0      # SPG's Sudoku protocol: 3 worked examples before the question
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # as training's
  if arg == "tiny":
    c.tasks = "sudoku"
    c.gen_lengths = (32,)
    c.block_length = 16
    c.batch_size = 4
    c.max_prompt_length = 64
    c.limit = 8
  return c


RECIPES = (*TASKS, "eval")


def get_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  """The recipe ``name`` (a task of :data:`TASKS`, or ``"eval"``) with variants ``arg``."""
  return eval_config(arg) if name == "eval" else task_config(name, arg)
