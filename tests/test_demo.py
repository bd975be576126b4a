"""The main job under test: `make demo`'s path (the committed demo model exported, served by the embedded server,
the held-out clips and the story video indexed, searched and measured with `eval`'s code) keeps its figures, so a
change that breaks `make demo` turns `make test` red."""
from __future__ import annotations

from s3d_retrieval.client.defaults import MODEL_NAME
from s3d_retrieval.export.pipeline import export_model
from s3d_retrieval.model.corpus import DEMO_MODULE
from s3d_retrieval.serving.demo import main, run

# Floors under what the committed model reaches (README, "The demo"), far above chance (1/32 and ~0.1), and the
# issue's targets for moments (#23), which the best window alone cannot reach (a 1.6 s window on a 4 s event: IoU
# at most 0.4).
HELDOUT_R1 = 0.6  # here: 0.88
STORY_MIOU, STORY_R1_IOU05 = 0.5, 0.6  # here: 0.71 and 0.90; the best window alone 0.29 and 0.00


def test_the_demo_finds_the_held_out_clips_and_the_story_moments(tmp_path, capsys):
    model_dir = tmp_path / "models" / MODEL_NAME
    export_model(str(DEMO_MODULE), model_dir)
    demo = run(model_dir, tmp_path / "out")
    assert demo.heldout.queries == len(demo.pairs) == 32 and demo.heldout.videos == 32
    assert demo.heldout.text_to_video["R@1"] >= HELDOUT_R1, demo.heldout.text_to_video
    assert demo.story.queries == len(demo.events), demo.story.moments
    assert demo.story.moments["mIoU"] >= STORY_MIOU and demo.story.moments["R@1,IoU>=0.5"] >= STORY_R1_IOU05, \
        demo.story.moments
    assert demo.story.best_window["R@1,IoU>=0.5"] == 0  # what moments add: no window alone covers half an event
    assert not demo.shown.warnings and (tmp_path / "out" / "index" / "search" / "manifest.json").is_file()
    assert [m.video for (m,) in demo.moments.matches] == [str((tmp_path / "out/corpus/story/story.webm").resolve())] \
        * len(demo.events)
    assert main(["--model-dir", str(model_dir), "--out", str(tmp_path / "out")]) == 0  # the index is reused
    printed = capsys.readouterr().out
    assert "added 0, replaced 0, unchanged 33" in printed and "held-out text->video R@1" in printed
    assert (tmp_path / "out" / "report.html").stat().st_size > 1000
