"""The main job under test: `make demo`'s path (the committed demo model exported, served by the embedded server,
the held-out clips and the story video indexed, searched and measured with `eval`'s code) keeps its figures, so a
change that breaks `make demo` turns `make test` red."""
from __future__ import annotations

from client.defaults import MODEL_NAME
from export.pipeline import export_model
from model.corpus import DEMO_MODULE
from serving.demo import main, run

# Floors under what the committed model reaches (README, "The demo"), far above chance (1/32 and ~0.1).
HELDOUT_R1, STORY_R1_IOU03 = 0.6, 0.5  # here: 0.88 and 0.70


def test_the_demo_finds_the_held_out_clips_and_the_story_moments(tmp_path, capsys):
    model_dir = tmp_path / "models" / MODEL_NAME
    export_model(str(DEMO_MODULE), model_dir)
    demo = run(model_dir, tmp_path / "out")
    assert demo.heldout.queries == len(demo.pairs) == 32 and demo.heldout.videos == 32
    assert demo.heldout.text_to_video["R@1"] >= HELDOUT_R1, demo.heldout.text_to_video
    assert demo.story.queries == len(demo.events) and demo.story.moments["R@1,IoU>=0.3"] >= STORY_R1_IOU03, \
        demo.story.moments
    assert not demo.shown.warnings and (tmp_path / "out" / "index" / "search" / "manifest.json").is_file()
    assert [m.video for (m,) in demo.moments.matches] == [str((tmp_path / "out/corpus/story/story.webm").resolve())] \
        * len(demo.events)
    assert main(["--model-dir", str(model_dir), "--out", str(tmp_path / "out")]) == 0  # the index is reused
    printed = capsys.readouterr().out
    assert "added 0, replaced 0, unchanged 33" in printed and "held-out text->video R@1" in printed
    assert (tmp_path / "out" / "report.html").stat().st_size > 1000
