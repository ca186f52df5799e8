"""The per-action cost model: its DPT figures reproduce the paper's Table 7 (DPT re-runs
the full context per call, as the paper's code does), and the key/value cache is what
makes AD's actions and searches cheaper."""

from dicp_jax.flops import macs_per_action, search_calls
from dicp_jax.model import ModelConfig
from dicp_jax.planning.beam import BeamConfig


def test_dpt_matches_table_7_and_ad_is_cheaper_with_its_cache():
    dark, k2d = ModelConfig(n_transit=80), ModelConfig(n_transit=200)
    assert abs(macs_per_action("dpt", dark, 5) / 6e6 - 1) < 0.25
    assert abs(macs_per_action("dpt", k2d, 5) / 20e6 - 1) < 0.25
    assert abs(macs_per_action("dpt", dark, 5, BeamConfig(10, 8)) / 2e9 - 1) < 0.25
    assert abs(macs_per_action("dpt", k2d, 5, BeamConfig(10, 16)) / 18e9 - 1) < 0.25
    for cfg, depth in ((dark, 8), (k2d, 16)):
        assert macs_per_action("ad", cfg, 5) * 10 < macs_per_action("dpt", cfg, 5)
        plan = BeamConfig(10, depth)
        assert macs_per_action("ad", cfg, 5, plan) * 10 < macs_per_action("dpt", cfg, 5, plan)


def test_search_counts_every_executed_candidate():
    assert search_calls(10, 1, 5) == (0, 5)
    assert search_calls(10, 8, 5) == (70, 5 + 7 * 50)


def test_experiment_tables_state_each_rows_cost():
    """An experiment's notes give every discrete row its multiply-adds per action from the
    same cost model, and skip what it does not cover (continuous actions)."""
    import dicp_envs
    from dicp_jax.experiment import cost_notes, load_experiment, stage_configs

    exp = load_experiment("darkroom_methods")
    cfgs = stage_configs(exp)
    [note] = cost_notes(exp, cfgs, dicp_envs.make(exp.env)[0])
    dpt = [r for r in exp.rows if r.method == "dpt" and r.planner == "beam"][0]
    want = macs_per_action("dpt", cfgs["model"], 5, cfgs["eval"][dpt.label].plan)
    assert f"{dpt.label} {want / 1e9:.3g}G" in note
    # with the share of steps the search ran on, the mean per action comes first
    policy = macs_per_action("dpt", cfgs["model"], 5)
    [note] = cost_notes(exp, cfgs, dicp_envs.make(exp.env)[0], {dpt.label: 0.25})
    mean = 0.25 * want + 0.75 * policy
    assert (f"{dpt.label} {mean / 1e6:.3g}M (searched on 25% of steps, {want / 1e9:.3g}G per "
            "searched step)") in note
    reach = load_experiment("reach")
    assert cost_notes(reach, stage_configs(reach), dicp_envs.make(reach.env)[0]) == []
