"""d1's bundled test sets (``README.md``) and :mod:`dispo_jax.data.prepare`, which writes the real
tasks' files (``python -m dispo_jax.data``)."""
