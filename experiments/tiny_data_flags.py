"""The tiny data flags shared by the experiment scripts (one place for their names and defaults):
Sudoku's blanks, several solutions and the SFT demonstrator's error; Countdown's numbers."""

from __future__ import annotations

import argparse


def add(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--num-blanks", default="6,10", help="fewest,most blank cells")
  parser.add_argument("--several-solutions", action="store_true",
                      help="admit puzzles with several solutions (data.unique_solutions=False)")
  parser.add_argument("--sft-error-rate", type=float, default=0.0,
                      help="the SFT demonstrator's error rate (data.sft_error_rate)")
  parser.add_argument("--sft-error", default="next_digit",
                      help="next_digit | next_digit_per_answer | four_as_one (data.sft_error)")
  parser.add_argument("--countdown-numbers", default="1,99",
                      help="tiny Countdown: smallest,largest number (data.countdown_numbers)")


def apply(c, args: argparse.Namespace) -> None:
  """Sets config ``c``'s data section from the flags :func:`add` defined for its task."""
  if c.task == "countdown":
    c.data.countdown_numbers = tuple(int(n) for n in args.countdown_numbers.split(","))
  if c.task != "sudoku":
    return
  c.data.num_blanks = tuple(int(n) for n in args.num_blanks.split(","))
  c.data.unique_solutions = not args.several_solutions
  c.data.sft_error_rate = args.sft_error_rate
  c.data.sft_error = args.sft_error
