"""Rewards, parsers and data: hand-written d1 cases, properties, generators, malformed files."""

import math
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dispo_jax.tasks import countdown, data, get_task, gsm8k, math500, metric, sudoku
from dispo_jax.tasks.base import Score, find_delimited, last_answer_block, split_answer

SUDOKU_ROW = {"puzzle": "3102200002100320", "solution": "3142243142131324"}  # 8 blanks
CD_ROW = {"numbers": [30, 100, 93], "target": 23}


# ---------------------------------------------------------------- answer extraction


def test_answer_extraction_edge_cases():
  assert last_answer_block("no tags") is None
  assert last_answer_block("<answer>1</answer> x <answer>\n 2 \n</answer>") == "2"
  assert last_answer_block("<answer>unclosed") is None
  assert split_answer("<answer>unclosed") == "unclosed"  # d1's split-based extraction
  assert split_answer("plain 42") == "plain 42"


# ---------------------------------------------------------------- sudoku


@pytest.mark.parametrize("text, expected", [
    ("<answer>3142243142131324</answer>", 1.0),
    ("no answer at all", 0.0),
    ("<answer></answer>", 0.0),
    # several blocks: only the last counts
    ("<answer>3142243142131324</answer><answer>0000000000000000</answer>", 0.0),
    # separators are dropped, digits kept
    ("<answer>3142 2431\n4213 1324</answer>", 1.0),
    # short answers are right-padded with '0': the first 8 cells hold the blanks 2, 5, 6, 7
    ("<answer>31422431</answer>", 4 / 8),
    # long answers are truncated to 16
    ("<answer>31422431421313249999</answer>", 1.0),
    # one wrong blank (index 2: '4' -> '1')
    ("<answer>3112243142131324</answer>", 7 / 8),
])
def test_sudoku_reward(text, expected):
  assert sudoku.TASK.reward(text, SUDOKU_ROW) == pytest.approx(expected)


def test_sudoku_metric_is_cell_accuracy_over_all_blanks():
  rows = [SUDOKU_ROW, {"puzzle": "3142243142131320", "solution": "3142243142131324"}]  # 8 + 1
  scores = [sudoku.TASK.score("<answer>3142243142131324</answer>", rows[0]),
            sudoku.TASK.score("nothing", rows[1])]
  assert metric(scores) == pytest.approx(8 / 9)


@pytest.mark.parametrize("text, cells, solved", [
    ("<answer>3142243142131324</answer>", 1.0, 1.0),
    ("<answer>3112243142131324</answer>", 7 / 8, 0.0),  # one wrong blank: nothing
    ("<answer>31422431</answer>", 4 / 8, 0.0),
    ("no answer at all", 0.0, 0.0),
])
def test_the_sparse_sudoku_reward_pays_only_for_a_solved_puzzle(text, cells, solved):
  sparse = get_task("sudoku", reward="solved")
  assert get_task("sudoku").reward(text, SUDOKU_ROW) == pytest.approx(cells)
  assert sparse.reward(text, SUDOKU_ROW) == solved
  assert sparse.score(text, SUDOKU_ROW) == Score(solved, 1.0)  # the metric: puzzles solved


def test_a_reward_a_task_does_not_offer_is_named():
  with pytest.raises(KeyError, match=r"unknown reward 'solved' for task countdown; choose one of "
                     r"\['default'\]"):
    get_task("countdown", reward="solved")
  with pytest.raises(KeyError, match=r"unknown reward 'cell' for task sudoku; choose one of "
                     r"\['default', 'cells', 'solved'\]"):
    get_task("sudoku", reward="cell")


def test_sudoku_grids_generator_and_split():
  grids = sudoku.all_grids()
  assert len(grids) == 288 and len(set(grids)) == 288
  d1_test_grids = {r["solution"] for r in data.load_rows("sudoku")}
  train, test = sudoku.split_grids(test_fraction=0.2, seed=0, exclude_from_train=d1_test_grids)
  assert set(train).isdisjoint(test) and set(train) | set(test) == set(grids)
  assert d1_test_grids <= set(test)
  puzzles = sudoku.generate_puzzles(train, 30, num_blanks=(4, 12), seed=1)
  for row in puzzles:
    assert row["solution"] in train
    assert sudoku.count_solutions(row["puzzle"], limit=3) == 1
    assert all(p in ("0", s) for p, s in zip(row["puzzle"], row["solution"]))
  assert sudoku.generate_puzzles(train, 5, 8, seed=3) == sudoku.generate_puzzles(train, 5, 8, seed=3)
  with pytest.raises(ValueError, match="0..12 blanks"):
    sudoku.generate_puzzles(train, 1, 13)


def test_puzzles_with_several_solutions_score_against_the_closest_one():
  train, _ = sudoku.split_grids(test_fraction=0.2, seed=0)
  puzzles = sudoku.generate_puzzles(train, 40, num_blanks=(11, 13), seed=2, unique=False)
  several = [r for r in puzzles if sudoku.count_solutions(r["puzzle"], limit=3) > 1]
  assert several, "11-13 blanks should leave some puzzles ambiguous"
  for row in several:
    found = sudoku.solutions(row["puzzle"])
    assert row["solution"] in found and all(sudoku.is_valid_grid(g) for g in found)
    assert len(found) == sum(all(p in ("0", c) for p, c in zip(row["puzzle"], g))
                             for g in sudoku.all_grids())  # brute force over all 288 grids
    other = next(g for g in found if g != row["solution"])
    answer = f"<answer>{other}</answer>"
    assert sudoku.reward(answer, row) == 1.0
    assert sudoku.reward(answer, row, d1_compat=True) < 1.0  # d1: the stored solution only
    mixed = "".join(a if i % 2 else b for i, (a, b) in enumerate(zip(other, row["solution"])))
    blanks = [i for i, p in enumerate(row["puzzle"]) if p == "0"]
    best = max(sum(mixed[i] == g[i] for i in blanks) for g in found) / len(blanks)
    assert sudoku.reward(f"<answer>{mixed}</answer>", row) == pytest.approx(best)
  with pytest.raises(ValueError, match="0..16 blanks"):
    sudoku.generate_puzzles(train, 1, 17, unique=False)


@given(st.text(alphabet="01234", min_size=16, max_size=16))
@settings(max_examples=300, deadline=None)
def test_unique_puzzles_score_as_before(grid_digits):
  """On a puzzle with one solution the closest-solution score is d1's stored-solution score."""
  row = sudoku.generate_puzzles(list(sudoku.all_grids()), 1, 8, seed=len(grid_digits))[0]
  text = f"<answer>{grid_digits}</answer>"
  assert sudoku.cell_score(text, row) == sudoku.cell_score(text, row, d1_compat=True)


def test_rl_prompts_on_test_grids_and_a_subset_of_test_grids():
  from dispo_jax.tasks import tiny
  from dispo_jax.tasks.base import DataSettings
  d = DataSettings(num_train=300, rl_on_test_grids=True, num_test_grids=12)
  rl, test = tiny.sudoku_rows(d)
  sft = {r["solution"] for r in tiny.sudoku_sft_rows(d)}
  assert len({r["solution"] for r in test}) == 12
  assert {r["solution"] for r in rl} <= {r["solution"] for r in test}  # the same grids
  assert {r["puzzle"] for r in rl}.isdisjoint(r["puzzle"] for r in test)  # other puzzles
  assert sft.isdisjoint(r["solution"] for r in test)
  with pytest.raises(ValueError, match="rl_on_test_grids"):
    DataSettings(rl_on_test_grids=True, rl_grid_fraction=0.5)
  with pytest.raises(ValueError, match="num_test_grids=999"):
    tiny.sudoku_rows(DataSettings(num_test_grids=999))
  with pytest.raises(ValueError, match="num_blanks"):
    DataSettings(num_blanks=(10, 14))
  DataSettings(num_blanks=(10, 14), unique_solutions=False)


def test_tiny_countdown_draws_its_numbers_from_the_configured_range():
  from dispo_jax.tasks import tiny
  from dispo_jax.tasks.base import DataSettings
  train, test = tiny.countdown_rows(DataSettings(num_train=300, num_test=50,
                                                 countdown_numbers=(1, 9)))
  assert len(test) == 50 and 0 < len(train) <= 300
  held_out = {(tuple(sorted(r["numbers"])), r["target"]) for r in test}
  assert not any((tuple(sorted(r["numbers"])), r["target"]) in held_out for r in train)
  for row in train + test:
    assert all(1 <= n <= 9 for n in row["numbers"]), row
    assert countdown.equation_reward(row["solution"], row) == 1.0, row  # each number once, hits it
  default = tiny.countdown_rows(DataSettings(num_train=300, num_test=50))
  assert default == tiny.countdown_rows(DataSettings(num_train=300, num_test=50,
                                                     countdown_numbers=(1, 99)))
  assert max(n for rows in default for row in rows for n in row["numbers"]) > 9
  with pytest.raises(ValueError, match="countdown_numbers"):
    DataSettings(countdown_numbers=(9, 1))


def test_sft_answers_carry_the_next_digit_error_and_nothing_else_changes():
  from dispo_jax.tasks import tiny
  from dispo_jax.tasks.base import DataSettings
  clean, noisy = (DataSettings(num_train=400, sft_error_rate=r) for r in (0.0, 0.6))
  exact, written = tiny.sudoku_sft_rows(clean), tiny.sudoku_sft_rows(noisy)
  assert [r["puzzle"] for r in exact] == [r["puzzle"] for r in written]
  blanks = wrong = 0
  for e, w in zip(exact, written):
    for given, true, shown in zip(e["puzzle"], e["solution"], w["solution"]):
      if given != "0":
        assert shown == true == given
        continue
      blanks += 1
      if shown != true:
        wrong += 1
        assert shown == "1234"[int(true) % 4]  # the next digit, 4 -> 1
  assert abs(wrong / blanks - 0.6) < 0.03, wrong / blanks
  assert tiny.sudoku_rows(clean) == tiny.sudoku_rows(noisy)  # RL and test rows stay exact
  whole = tiny.sudoku_sft_rows(DataSettings(num_train=400, sft_error_rate=0.6,
                                            sft_error="next_digit_per_answer"))
  shifted = [sum(a != b for a, b in zip(e["solution"], w["solution"])) for e, w in zip(exact, whole)]
  assert all(n in (0, e["puzzle"].count("0")) for n, e in zip(shifted, exact))  # all blanks or none
  assert abs(sum(n > 0 for n in shifted) / len(shifted) - 0.6) < 0.06
  with pytest.raises(ValueError, match="sft_error_rate"):
    DataSettings(sft_error_rate=1.0)
  fours = tiny.sudoku_sft_rows(DataSettings(num_train=400, sft_error_rate=0.6,
                                            sft_error="four_as_one"))
  changed = [(t, w) for e, f in zip(exact, fours) for t, w in zip(e["solution"], f["solution"])
             if t != w]
  assert changed and all((t, w) == ("4", "1") for t, w in changed)
  with pytest.raises(ValueError, match="sft_error"):
    DataSettings(sft_error="row")


# ---------------------------------------------------------------- countdown


@pytest.mark.parametrize("text, expected, compat", [
    ("<answer>100 - 93 + 30 - 30</answer>", 0.1, False),    # extra number
    ("<answer>100 - 93 + 30</answer>", 0.1, False),         # = 37, wrong value
    ("<answer>30 - (100 - 93)</answer>", 1.0, False),       # = 23
    ("<answer>(100 - 93) * 30 / 30</answer>", 0.1, False),  # uses 30 twice
    ("no answer", 0.0, False),
    ("<answer>x + 1</answer>", 0.1, False),                 # invalid characters
    ("<answer>30 - (100 - 93)</answer><answer>30+93</answer>", 0.1, False),  # last block counts
    ("<answer>30 / (100 - 100)</answer>", 0.1, False),
])
def test_countdown_reward(text, expected, compat):
  assert countdown.reward(text, CD_ROW, compat) == expected


def test_countdown_division_and_powers():
  row = {"numbers": [8, 2, 3], "target": 12}
  assert countdown.reward("<answer>8 / 2 * 3</answer>", row) == 1.0
  assert countdown.safe_evaluate("7/2") == 3.5
  row = {"numbers": [2, 3, 4], "target": 12}
  # ** is not arithmetic of the task: invalid by default, evaluated (bounded) in d1_compat
  assert countdown.reward("<answer>2**3+4</answer>", row) == 0.1
  assert countdown.reward("<answer>2**3+4</answer>", row, d1_compat=True) == 1.0
  start = time.perf_counter()
  assert countdown.safe_evaluate("9**9**9**9", d1_compat=True) is None
  assert countdown.safe_evaluate("(" * 500 + "1" + ")" * 500) is None
  assert time.perf_counter() - start < 1.0


def test_countdown_eval_reads_boxed_first():
  text = "<answer>\n\\boxed{30 - (100 - 93)}\n</answer>"
  assert countdown.TASK.score(text, CD_ROW) == Score(1.0, 1.0)
  assert countdown.TASK.score("<answer>30-(100-93)</answer>", CD_ROW) == Score(1.0, 1.0)
  assert countdown.TASK.score("\\boxed{30 \\times 1}", CD_ROW) == Score(0.0, 1.0)


def test_countdown_generator_is_solvable_and_roundtrips(tmp_path):
  rows = countdown.generate_problems(50, seed=0)
  for row in rows:
    assert countdown.equation_reward(row["solution"], row) == 1.0
  path = tmp_path / "cd.jsonl"
  path.write_text("\n".join(countdown.to_jsonl_row(r) for r in rows) + "\n")
  loaded = data.load_countdown(str(path))
  assert [(r["numbers"], r["target"]) for r in loaded] == [(r["numbers"], r["target"]) for r in rows]


# ---------------------------------------------------------------- gsm8k


GSM_ROW = {"question": "2+2?", "answer": "Two and two.\n#### 4"}
GOOD = "<reasoning>\nadd\nthem\n</reasoning>\n<answer>\n4\n</answer>\n"


def test_gsm8k_terms_default_and_d1_compat():
  terms = gsm8k.TASK.reward_breakdown(GOOD, GSM_ROW)
  assert terms == {"xml_count": 0.5, "soft_format": 0.5, "strict_format": 0.5, "int": 0.5,
                   "correctness": 2.0}
  compat = get_task("gsm8k", d1_compat=True).reward_breakdown(GOOD, GSM_ROW)
  # without DOTALL a multi-line <reasoning> block never matches either format
  assert compat["soft_format"] == 0.0 and compat["strict_format"] == 0.0
  one_line = "<reasoning>\nadd\n</reasoning>\n<answer>\n4\n</answer>\n"
  assert get_task("gsm8k", d1_compat=True).reward_breakdown(one_line, GSM_ROW)["strict_format"] == 0.5
  assert gsm8k.TASK.reward("<answer>5</answer>", GSM_ROW) < 2.0
  assert gsm8k.xml_count_reward(GOOD + "trailing junk", GSM_ROW) < 0.5


def test_gsm8k_eval_parser():
  assert gsm8k.TASK.score("<answer>\\boxed{4}</answer>", GSM_ROW) == Score(1.0, 1.0)
  assert gsm8k.TASK.score("<answer>so it is 3 then 4</answer>", GSM_ROW) == Score(1.0, 1.0)
  assert gsm8k.TASK.score("\\boxed{...} <answer>5</answer>", GSM_ROW) == Score(0.0, 1.0)


# ---------------------------------------------------------------- math500


@pytest.mark.parametrize("a, b", [
    ("\\frac12", "\\frac{1}{2}"), ("0.5", "\\frac{1}{2}"), ("1/2", "\\frac{1}{2}"),
    ("\\dfrac{3}{4}", "\\frac{3}{4}"), ("\\left(1,2\\right)", "(1,2)"), ("x = 5", "5"),
    ("90^\\circ", "90"), ("\\sqrt2", "\\sqrt{2}"), (".5", "0.5"), ("10\\%", "10"),
    ("5 \\text{ cm}", "5"), ("\\$3", "3"),
])
def test_math_normalisation_equivalences(a, b):
  assert math500.is_equiv(a, b)


def test_math_not_equivalent_and_boxed_extraction():
  assert not math500.is_equiv("\\frac{1}{3}", "\\frac{1}{2}")
  assert math500.last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{x^{2}}") == "\\boxed{x^{2}}"
  assert math500.strip_boxed("\\boxed{x^{2}}") == "x^{2}"
  assert math500.last_boxed("\\boxed{unclosed") is None


def test_math_rewards_default_and_d1_compat():
  row = {"problem": "?", "answer": "\\frac{1}{2}"}
  text = "<reasoning>r</reasoning><answer>\\boxed{\\dfrac{1}{2}}</answer>"
  assert math500.TASK.reward_breakdown(text, row) == {"correctness": 2.0, "format": 1.0}
  # d1's "\boxed" literal is a backspace + "oxed": the boxed bonus never applies
  assert get_task("math500", d1_compat=True).reward_breakdown(text, row)["format"] == 0.75
  assert math500.TASK.reward_breakdown("\\boxed{3}", row) == {"correctness": 0.0, "format": 0.5}
  assert math500.TASK.score(text, row) == Score(1.0, 1.0)
  solution_only = {"problem": "?", "solution": "so \\boxed{7}."}
  assert math500.TASK.score("\\boxed{7}", solution_only) == Score(1.0, 1.0)


# ---------------------------------------------------------------- properties

ANY_TEXT = st.one_of(
    st.text(max_size=300),
    st.builds(lambda a, b: f"<answer>{a}</answer>{b}", st.text(max_size=200), st.text(max_size=50)),
    st.builds(lambda n: f"<answer>{n}**{n}**{n}</answer>", st.integers(-10**30, 10**30)),
    st.builds(lambda d: "<answer>" + "(" * d + "1+2" + ")" * d + "</answer>",
              st.integers(0, 3000)),
    st.builds(lambda s: "\\boxed{" + s + "}", st.text(max_size=100)),
    st.just("<answer>" + "9" * 5000 + "</answer>" * 3),
)
RANGES = {"sudoku": (0.0, 1.0), "countdown": (0.0, 1.0), "gsm8k": (-math.inf, 4.0),
          "math500": (0.0, 3.0)}
ROWS = {"sudoku": SUDOKU_ROW, "countdown": CD_ROW, "gsm8k": GSM_ROW,
        "math500": {"problem": "?", "answer": "\\frac{1}{2}"}}


@settings(max_examples=150, deadline=None)
@given(text=ANY_TEXT, compat=st.booleans())
def test_rewards_and_metrics_never_raise_and_stay_in_range(text, compat):
  for name, (low, high) in RANGES.items():
    task = get_task(name, d1_compat=compat)
    start = time.perf_counter()
    value = task.reward(text, ROWS[name])
    s = task.score(text, ROWS[name])
    assert time.perf_counter() - start < 2.0
    assert math.isfinite(value) and low <= value <= high, (name, value)
    assert 0.0 <= s.correct <= s.total


@settings(max_examples=200, deadline=None)
@given(expr=st.text(alphabet="0123456789+-*/(). ", max_size=120))
def test_safe_evaluate_is_arithmetic_only_and_bounded(expr):
  for compat in (False, True):
    start = time.perf_counter()
    value = countdown.safe_evaluate(expr, compat)
    assert time.perf_counter() - start < 0.5
    assert value is None or (math.isfinite(value) and abs(value) <= countdown.MAX_MAGNITUDE)


def test_safe_evaluate_never_executes_code():
  for attack in ["__import__('os').system('true')", "(1).__class__", "[1]*10**9", "1 if 1 else 2",
                 "lambda: 1", "1e400"]:
    assert countdown.safe_evaluate(attack, d1_compat=True) is None


# ---------------------------------------------------------------- data files


def test_malformed_rows_name_file_and_line(tmp_path):
  csv_path = tmp_path / "s.csv"
  csv_path.write_text("Puzzle,Solution\n3102200002100320,3142243142131324\n31022000021003,314\n")
  with pytest.raises(data.DataError, match=r"s\.csv:3: puzzle '31022000021003' is not 16 digits"):
    data.load_sudoku_csv(str(csv_path))
  csv_path.write_text("Puzzle,Solution\n3102200002100320,3142243142131323\n")
  with pytest.raises(data.DataError, match=r"s\.csv:2: solution .* is not a valid 4x4 grid"):
    data.load_sudoku_csv(str(csv_path))
  csv_path.write_text("puzzle;solution\n")
  with pytest.raises(data.DataError, match=r"s\.csv:1: expected header"):
    data.load_sudoku_csv(str(csv_path))
  jl = tmp_path / "c.jsonl"
  jl.write_text('{"input": "1,2,3", "output": "6"}\n{"input": "1,2", "output": oops}\n')
  with pytest.raises(data.DataError, match=r"c\.jsonl:2: invalid JSON"):
    data.load_countdown(str(jl))
  jl.write_text('{"input": "1,2,3", "output": "6"}\n' + "[" * 100000 + "]" * 100000 + "\n")
  with pytest.raises(data.DataError, match=r"c\.jsonl:2: JSON nested too deeply"):
    data.load_countdown(str(jl))
  jl.write_text('{"input": "1,2,3", "output": ' + "7" * 5000 + '}\n')
  with pytest.raises(data.DataError, match=r"c\.jsonl:1: unreadable JSON value"):
    data.load_countdown(str(jl))
  jl.write_text('{"input": "1,2,3", "output": "6"}\n\n{"input": "1,x,3", "output": "6"}\n')
  with pytest.raises(data.DataError, match=r"c\.jsonl:3: input='x' is not an integer"):
    data.load_countdown(str(jl))
  g = tmp_path / "g.jsonl"
  g.write_text('{"question": "q", "answer": "no hash"}\n')
  with pytest.raises(data.DataError, match=r"g\.jsonl:1: answer has no '#### <number>'"):
    data.load_gsm8k(str(g))
  m = tmp_path / "m.jsonl"
  m.write_text('{"problem": "p", "answer": "1"}\n{"question": "p"}\n')
  with pytest.raises(data.DataError, match=r"m\.jsonl:2: missing field\(s\) \['problem'\]"):
    data.load_math(str(m))
  with pytest.raises(data.DataError, match="does not exist"):
    data.load_gsm8k(str(tmp_path / "absent.jsonl"))


def test_hf_formats_from_local_files(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"question": ["a?", "b?"], "answer": ["x\n#### 1", "y\n#### 2"]}),
                 str(tmp_path / "gsm.parquet"))
  rows = data.load_gsm8k(str(tmp_path / "gsm.parquet"))
  assert [gsm8k.reference_answer(r) for r in rows] == ["1", "2"]
  pq.write_table(pa.table({"nums": [[1, 2, 3]], "target": [6]}), str(tmp_path / "cd.parquet"))
  assert data.load_countdown(str(tmp_path / "cd.parquet")) == [{"numbers": [1, 2, 3], "target": 6}]
  (tmp_path / "math.jsonl").write_text(
      '{"problem": "p", "solution": "s \\\\boxed{2}", "answer": "2", "subject": "Algebra", '
      '"level": 1, "unique_id": "test/x.json"}\n')
  row = data.load_math(str(tmp_path / "math.jsonl"))[0]
  assert math500.reference_answer(row) == "2"


def test_bundled_sets_and_d1_subset():
  sud, cd = data.load_rows("sudoku"), data.load_rows("countdown")
  assert len(sud) == 500 and len(cd) == 256
  idx = data.d1_eval_subset(sud, 256, seed=42)
  assert len(set(idx)) == 256 and idx == data.d1_eval_subset(sud, 256, seed=42)
  assert sorted(data.d1_eval_subset(cd, 256)) == list(range(256))


def test_tfds_data_source_without_tensorflow(tmp_path):
  import importlib.util
  from dispo_jax.tasks import tfds_builder
  assert importlib.util.find_spec("tensorflow") is None
  (tmp_path / "manual").mkdir()
  (tmp_path / "manual" / "train.jsonl").write_text(
      "\n".join(countdown.to_jsonl_row(r) for r in countdown.generate_problems(5)) + "\n")
  sources = tfds_builder.prepare("countdown", str(tmp_path / "tfds"), str(tmp_path / "manual"))
  assert set(sources) == {"train", "test"}
  assert tfds_builder.rows_in_order(sources["test"]) == data.load_rows("countdown")
  assert len(sources["train"]) == 5


def test_few_shot_sudoku_prompt_worked_examples_are_correct():
  from dispo_jax.tasks import data, sudoku
  d1_solutions = {r["solution"] for r in data.load_rows("sudoku")}
  prompt = sudoku.few_shot_prompt(3)({"puzzle": "0310200404001043"})
  assert prompt.endswith("Question: Solve the following Sudoku puzzle: 0310200404001043\nAnswer:\n")
  for puzzle in sudoku.FEW_SHOT_PUZZLES:
    assert sudoku.count_solutions(puzzle) == 1
    example = sudoku.worked_example(puzzle)
    solution = sudoku.parse_answer(example)
    assert sudoku.is_valid_grid(solution) and solution not in d1_solutions
    assert all(p in ("0", s) for p, s in zip(puzzle, solution))
    assert sudoku.reward(example, {"puzzle": puzzle, "solution": solution}) == 1.0
    assert example in prompt
  with pytest.raises(ValueError, match="few_shot=4"):
    sudoku.few_shot_prompt(4)
  with pytest.raises(ValueError, match="naked singles"):
    sudoku.solve_by_singles("0" * 16)


def test_digit_confusion_counts_each_blank_by_its_true_digit():
  from experiments.digit_confusion import confusion
  row = {"puzzle": "0234" "3412" "2143" "4320", "solution": "1234" "3412" "2143" "4321"}
  table = confusion(["<answer>1234341221434324</answer>", "no answer"], [row, row])
  # blank 1 (true 1): written 1, then unparsed; blank 16 (true 1): written 4, then unparsed
  np.testing.assert_allclose(table[0], [0.5, 0.25, 0, 0, 0.25])
  assert table[1:].sum() == 0


PIECES = ["<answer>", "</answer>", "<answer>\n", "\\boxed{", "<reasoning>", "</reasoning>",
          "</reasoning>\n<answer>", "\n</reasoning>\n<answer>\n", "{", "}", "\n", "1", "=", "####",
          "\\frac{", "$", "\\\\", "<reasoning>\n"]


@pytest.mark.parametrize("name", ["sudoku", "countdown", "gsm8k", "math500"])
def test_every_reward_and_metric_is_fast_on_100k_characters(name):
  """The answer regexes were quadratic (5-18 s on these strings); linear code takes milliseconds.
  The bound is loose (0.5 s) so a busy CI machine cannot fail it; a quadratic parser would."""
  row = {"sudoku": {"puzzle": "0" * 16, "solution": "1234" * 4},
         "countdown": {"numbers": [1, 2, 3], "target": 6},
         "gsm8k": {"question": "q", "answer": "x\n#### 3"},
         "math500": {"problem": "p", "answer": "3"}}[name]
  for d1_compat in (False, True):
    task = get_task(name, d1_compat)
    fns = {**task.reward_terms, "score": task.score}
    for i, piece in enumerate(PIECES):
      prefix = "<reasoning>" if i % 2 else ""
      text = (prefix + piece * (100_000 // len(piece)))[:100_000]
      for term, fn in fns.items():
        start = time.perf_counter()
        fn(text, row)
        assert time.perf_counter() - start < 0.5, (name, d1_compat, term, piece)


def test_linear_parsers_agree_with_the_regexes_they_replace():
  rng = np.random.default_rng(0)
  alphabet = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "a", "\\boxed{",
              "}", "<reasoning>\n", "\n</answer>\n"]
  for _ in range(20_000):
    text = "".join(rng.choice(alphabet, rng.integers(0, 10)))
    if rng.random() < 0.5:
      text = "<reasoning>" + text
    for dotall in (True, False):
      flags = re.DOTALL if dotall else 0
      assert find_delimited(text, "<answer>", "</answer>", dotall) == re.findall(
          r"<answer>(.*?)</answer>", text, flags)
      assert find_delimited(text, "\\boxed{", "}", dotall) == re.findall(
          r"\\boxed{(.*?)}", text, flags)
      assert gsm8k.soft_format_match(text, dotall) == bool(re.match(gsm8k._SOFT, text, flags))
      assert gsm8k.strict_format_match(text, dotall) == bool(re.match(gsm8k._STRICT, text, flags))
