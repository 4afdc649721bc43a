"""The run's infrastructure, below the CLIs: the config flag and settings checks (``config``), the
work folder's record and lock (``workdir``), object-store files (``storage``), checkpoints,
metrics, the HF export, and the multi-host start and stop (``distributed``). Nothing here imports
``pipeline/``; of ``rl/`` only the :class:`~dispo_jax.rl.state.TrainState` it saves."""
