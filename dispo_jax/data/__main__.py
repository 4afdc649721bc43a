from dispo_jax.data.prepare import cli

cli()
