"""The multi-host start and stop: joining the cluster (TPU pods, SLURM, an explicit coordinator)
and a preemption every host agrees on, so all of them stop after the same rollout batch."""

from __future__ import annotations

import os
import signal
import sys
import threading

import jax
import numpy as np


def initialize_distributed(timeout_s: int = 300) -> None:
  """``jax.distributed.initialize()`` on TPU pods, SLURM GPU clusters or an explicit coordinator;
  a no-op on one host. Says what it waits for; gives up after ``timeout_s``."""
  if jax.distributed.is_initialized():
    return
  env = os.environ
  multi_slurm = int(env.get("SLURM_NTASKS", "1")) > 1
  tpu_pod = len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1
  if env.get("JAX_COORDINATOR_ADDRESS"):
    if env.get("JAX_PLATFORMS", "cpu") == "cpu":  # CPU processes talk through gloo
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    print(f"waiting for the coordinator {env['JAX_COORDINATOR_ADDRESS']} "
          f"({env['JAX_NUM_PROCESSES']} processes; timeout {timeout_s} s)", flush=True)
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(env["JAX_NUM_PROCESSES"]),
                               process_id=int(env["JAX_PROCESS_ID"]),
                               initialization_timeout=timeout_s)
  elif multi_slurm or tpu_pod:
    print(f"waiting for the cluster's coordinator (timeout {timeout_s} s)", flush=True)
    jax.distributed.initialize(initialization_timeout=timeout_s)


class Preemption:
  """SIGTERM or a first Ctrl-C: finish the rollout batch, save, exit. A second Ctrl-C aborts."""

  def __init__(self):
    self.flag = False
    self.previous = {}
    if threading.current_thread() is threading.main_thread():  # signals reach the main thread
      for signum in (signal.SIGTERM, signal.SIGINT):
        self.previous[signum] = signal.signal(signum, self._handler)

  def agreed(self) -> bool:
    """Whether any process was asked to stop (a collective: every process calls it once per
    rollout batch), so hosts never leave the loop at different steps."""
    if jax.process_count() == 1:
      return self.flag
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.array([self.flag], np.int32))
    return bool(np.any(flags))

  def restore(self) -> None:
    """Puts back the handlers that were installed before (in-process callers, tests)."""
    for signum, handler in self.previous.items():
      signal.signal(signum, handler)

  def _handler(self, signum, frame):
    if self.flag and signum == signal.SIGINT:
      raise KeyboardInterrupt
    print(f"\n{signal.Signals(signum).name}: finishing the rollout batch, saving, exiting "
          f"(Ctrl-C again aborts without saving)", file=sys.stderr, flush=True)
    self.flag = True
