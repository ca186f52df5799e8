"""The reporting callback: what the console shows, what a recorder keeps, the metrics file."""

from __future__ import annotations

import io

from dicp_jax.reporting import Event, Recorder, append_metrics, console, read_metrics, silent


def _events() -> list[Event]:
    return [Event("stage", "[1/3] collecting"),
            Event("progress", "collect (chunk 4)", {"name": "collect", "done": 0, "total": 8}),
            Event("message", "halfway"),
            Event("progress", "collect (chunk 4)", {"name": "collect", "done": 4, "total": 8,
                                                    "postfix": {"steps_per_s": "1,000"}}),
            Event("metrics", "", {"step": 2, "loss": 0.5}),  # figures only: nothing shown
            Event("warning", "a setting does nothing"),
            Event("progress", "", {"name": "collect", "done": 8, "total": 8}),
            Event("metrics", "step 2: loss 0.5000", {"step": 2}),
            Event("progress", "", {"name": "train", "done": 3, "total": 3})]


def test_console_shows_lines_and_bars_and_no_progress_hides_only_bars(capsys):
    for progress in (True, False):
        out, err = io.StringIO(), io.StringIO()
        report = console(progress=progress, out=out, err=err)
        for event in _events():
            report(event)
        assert out.getvalue().splitlines() == ["[1/3] collecting", "halfway",
                                               "step 2: loss 0.5000"]
        assert err.getvalue() == "warning: a setting does nothing\n"
        bars = capsys.readouterr().err  # tqdm draws on stderr
        assert ("collect (chunk 4)" in bars and "8/8" in bars and "train" in bars) is progress
        assert progress or bars == ""


def test_recorder_keeps_events_and_silent_drops_them():
    rec = Recorder()
    for event in _events():
        rec(event)
        silent(event)
    assert len(rec.events) == len(_events())
    assert rec.messages("message", "warning") == ["halfway", "a setting does nothing"]
    assert rec.text("stage") == "[1/3] collecting"


def test_metrics_file_round_trip(tmp_path):
    assert read_metrics(tmp_path) == []
    append_metrics(tmp_path, {"step": 1, "loss": 2.0})
    append_metrics(tmp_path, {"step": 1, "val": {"action_acc": 0.5}})
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0},
                                      {"step": 1, "val": {"action_acc": 0.5}}]
