"""Jittable gymnax environments for in-context RL, imported as ``dicp_envs``.

    from dicp_envs import make, tasks
    env, params = make("darkroom")
    batch = tasks("darkroom", "train")   # EnvParams with a leading task axis

Adding an environment = one module + one ``register`` line below.
"""

from dicp_envs.base import Family, TaskEnv
from dicp_envs.darkroom import Darkroom
from dicp_envs.key_to_door import DarkKeyToDoor
from dicp_envs.permuted import DarkroomPermuted
from dicp_envs.registry import (
    family,
    make,
    names,
    register,
    split_indices,
    task_array,
    tasks,
    unregister,
)

# Paper defaults (Son et al., App. B): context length, planning depth (grid - 1 on Darkroom,
# 2 (grid - 1) on the longer-horizon grids) and PPO settings beyond SB3's defaults.
register("darkroom", Darkroom, split_seed=0, train_ratio=0.9, n_transit=80, plan_depth=8,
         source_settings={"ppo": dict(n_steps=20, minibatch_size=50, n_epochs=20)})
register("dark_key_to_door", DarkKeyToDoor, split_seed=4, train_ratio=0.95, n_transit=200,
         plan_depth=16, source_settings={"ppo": dict(n_steps=50, minibatch_size=100,
                                                       n_epochs=10)})
register("darkroom_permuted", DarkroomPermuted, split_seed=4, train_ratio=0.9, n_transit=200,
         plan_depth=16, source_settings={"ppo": dict(n_steps=50, minibatch_size=50,
                                                       n_epochs=20)})

__all__ = ["Family", "TaskEnv", "family", "make", "names", "register", "split_indices",
           "task_array", "tasks", "unregister"]

# Continuous control with Meta-World ML1 semantics on Brax's MJX pipeline (dicp_envs.brax_arm):
# drawn tasks, 50 train / 50 test per split seed; the paper's ML1 context is 10 episodes of
# 100 steps, its planning depth 1 (one-step reward lookahead), its source SB3 Gaussian PPO.
from dicp_envs.brax_arm import block_splits  # noqa: E402
from dicp_envs.push import Push  # noqa: E402
from dicp_envs.reach import Reach  # noqa: E402

_ML1_SOURCE = {"gaussian_ppo": dict(n_streams=100, n_steps=100, minibatch_size=200, n_epochs=20,
                                    steps_per_stream=10000)}
register("reach", Reach, splits=block_splits, n_transit=1000, plan_depth=1,
         source="gaussian_ppo", source_settings=_ML1_SOURCE)
register("push", Push, splits=block_splits, n_transit=1000, plan_depth=1,
         source="gaussian_ppo", source_settings=_ML1_SOURCE)

# Real Meta-World ML1 (the optional ``metaworld`` extra), stepped on the host
# (dicp_envs.metaworld_ml1): one family per ML1 benchmark, its 50 train and 50 test tasks;
# the paper's context (10 episodes), planning depth and source settings as for the analogues.
from dicp_envs import metaworld_ml1  # noqa: E402

for _task in metaworld_ml1.ML1_TASKS:
    register(metaworld_ml1.PREFIX + _task, metaworld_ml1.factory(_task),
             splits=metaworld_ml1.ml1_splits, n_transit=1000, plan_depth=1,
             source="gaussian_ppo", source_settings=_ML1_SOURCE)
del _task
