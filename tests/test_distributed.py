"""run/distributed.py: Ctrl-C asks for a clean, agreed stop; a second one aborts."""

import os
import signal
import time

import pytest

from dispo_jax.run import distributed


def test_ctrl_c_asks_for_a_clean_stop_and_a_second_one_aborts():
  before = signal.getsignal(signal.SIGINT)
  preempted = distributed.Preemption()
  try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)
    assert preempted.flag
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.1)
  finally:
    preempted.restore()
  assert signal.getsignal(signal.SIGINT) is before
