"""Train/test task splits reproduce the paper's public-code procedure exactly."""

from __future__ import annotations

import random

import jax
import numpy as np
import pytest

import dicp_envs

# name -> (split seed, train ratio, n train, n test)
EXPECTED = {
    "darkroom": (0, 0.9, 73, 8),
    "dark_key_to_door": (4, 0.95, 6233, 328),
    "darkroom_permuted": (4, 0.9, 108, 12),
}


def paper_split(name: str, seed: int, ratio: float) -> tuple[list, list]:
    """The procedure as the paper's code writes it: nested loops, global seed, shuffle."""
    r = range(9)
    if name == "darkroom":
        tasks = [[i, j] for i in r for j in r]
    elif name == "dark_key_to_door":
        tasks = [[ki, kj, gi, gj] for ki in r for kj in r for gi in r for gj in r]
    else:
        tasks = [[p] for p in range(120)]
    random.seed(seed)
    random.shuffle(tasks)
    n_train = round(len(tasks) * ratio)
    return tasks[:n_train], tasks[n_train:]


@pytest.mark.parametrize("name", list(EXPECTED))
def test_split_matches_procedure(name):
    seed, ratio, n_train, n_test = EXPECTED[name]
    spec = dicp_envs.family(name)
    assert (spec.split_seed, spec.train_ratio) == (seed, ratio)
    train, test = paper_split(name, seed, ratio)
    assert dicp_envs.task_array(name, "train").tolist() == train
    assert dicp_envs.task_array(name, "test").tolist() == test
    assert (len(train), len(test)) == (n_train, n_test)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_split_partitions_all_tasks(name):
    train = dicp_envs.split_indices(name, "train")
    test = dicp_envs.split_indices(name, "test")
    every = dicp_envs.split_indices(name, "all")
    env, _ = dicp_envs.make(name)
    assert every.tolist() == list(range(len(env.task_list())))
    assert not set(train) & set(test)
    assert sorted([*train, *test]) == every.tolist()
    # Indices point into the row-major task list.
    assert dicp_envs.task_array(name, "test").tolist() == [list(env.task_list()[i]) for i in test]
    # Batched params carry the same tasks, in the same order.
    leaves = jax.tree.leaves(dicp_envs.tasks(name, "test"))
    assert leaves and all(x.shape[0] == len(test) for x in leaves)


def test_darkroom_test_goals_pinned():
    """Regression pin of the paper's 8 held-out Darkroom goals (seed 0)."""
    assert dicp_envs.task_array("darkroom", "test").tolist() == [
        [4, 2], [5, 6], [6, 8], [7, 2], [3, 6], [0, 5], [5, 8], [5, 4]]


def test_custom_seed_and_ratio_and_global_random_untouched():
    random.seed(123)
    before = random.random()
    random.seed(123)
    train, test = paper_split("darkroom", 7, 0.5)
    random.seed(123)
    assert dicp_envs.task_array("darkroom", "train", seed=7, ratio=0.5).tolist() == train
    assert dicp_envs.task_array("darkroom", "test", seed=7, ratio=0.5).tolist() == test
    assert random.random() == before  # splitting does not reseed the caller's generator


def test_split_on_non_default_grid():
    train = dicp_envs.task_array("darkroom", "train", grid_size=4)
    test = dicp_envs.task_array("darkroom", "test", grid_size=4)
    assert len(train) == round(16 * 0.9) and len(train) + len(test) == 16
    assert sorted(map(tuple, np.concatenate([train, test]))) == [
        (i, j) for i in range(4) for j in range(4)]


def test_bad_split_arguments():
    with pytest.raises(ValueError, match="unknown split 'val'"):
        dicp_envs.split_indices("darkroom", "val")
    with pytest.raises(ValueError, match="train ratio must be in"):
        dicp_envs.split_indices("darkroom", "train", ratio=1.5)
    with pytest.raises(ValueError, match="known: .*dark_key_to_door, darkroom"):
        dicp_envs.split_indices("nope", "train")
