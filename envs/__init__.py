"""Jittable gymnax environments for in-context RL, imported as ``dicp_envs``.

    from dicp_envs import make, tasks
    env, params = make("darkroom")
    batch = tasks("darkroom", "train")   # EnvParams with a leading task axis

Adding an environment = one module + one ``register`` line below.
"""

from dicp_envs.darkroom import Darkroom
from dicp_envs.key_to_door import DarkKeyToDoor
from dicp_envs.permuted import DarkroomPermuted
from dicp_envs.registry import make, names, register, spec, split_indices, task_array, tasks

register("darkroom", Darkroom, split_seed=0, train_ratio=0.9)
register("dark_key_to_door", DarkKeyToDoor, split_seed=4, train_ratio=0.95)
register("darkroom_permuted", DarkroomPermuted, split_seed=4, train_ratio=0.9)

__all__ = ["make", "names", "register", "spec", "split_indices", "task_array", "tasks"]
