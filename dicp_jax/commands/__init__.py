"""Subcommands of the ``dicp`` CLI (see ``dicp_jax/cli.py``)."""
