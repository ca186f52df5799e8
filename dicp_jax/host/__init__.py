"""Host-stepped families (real Meta-World): the collection and meta-test loops that step
envs from Python while the policy, the PPO update and the model step stay jitted, one call
per env step for every task and stream at once.

``collect`` (the data layer) and ``evaluate`` (the evaluation layer) are the counterparts of
``dicp_jax.collect`` and ``dicp_jax.evaluate``, which hand a family declaring
``host_stepped`` to them, so the dataset format, the experiments and the result tables are
the same for both kinds of family.
"""
