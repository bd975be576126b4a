"""The main job under test: `make demo`'s path (the committed demo model exported, served by the embedded server,
the held-out clips and the story video indexed, searched and measured with `eval`'s code) keeps its figures, so a
change that breaks `make demo` turns `make test` red."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from s3d_retrieval.client.cli import main as main_cli
from s3d_retrieval.client.defaults import MODEL_NAME
from s3d_retrieval.export.pipeline import export_model
from s3d_retrieval.model.corpus import DEMO_MODULE
from s3d_retrieval.serving.demo import main, run
from tests.conftest import files_of, start_server

ROOT = Path(__file__).resolve().parents[1]

# Floors under what the committed model reaches (docs/explanation/benchmarks.md, "The demo"), far above chance
# (1/32 and ~0.1), and the targets for moments (#23), which the best window alone cannot reach (a 1.6 s
# window on a 4 s event: IoU at most 0.4).
HELDOUT_R1 = 0.6  # here: 0.88
STORY_MIOU, STORY_R1_IOU05 = 0.5, 0.6  # here: 0.71 and 0.90; the best window alone 0.29 and 0.00


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The committed demo model exported (version 1), and the demo run on it: the held-out clips and the story
    indexed under out/."""
    tmp_path = tmp_path_factory.mktemp("demo")
    model_dir = tmp_path / "models" / MODEL_NAME
    export_model(str(DEMO_MODULE), model_dir)
    return tmp_path, model_dir, run(model_dir, tmp_path / "out")


def test_the_demo_finds_the_held_out_clips_and_the_story_moments(demo_run, capsys):
    tmp_path, model_dir, demo = demo_run
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


def test_the_promote_gate_refuses_random_weights_against_the_demo_model(demo_run, tmp_path, standin, capsys):
    """The demo model's index in service, and an index of the same held-out clips by random weights (the stand-in):
    the gate measures both on the held-out set and refuses the worse, exit 1 with both figures; --force promotes."""
    from s3d_retrieval.serving.embedded.server import EmbeddedServer, Options
    from tests.test_versions import config

    ran, demo_models, _ = demo_run  # the demo model (version 1) and the demo's index of it, only read here
    model_dir = tmp_path / MODEL_NAME
    shutil.copytree(demo_models / "1", model_dir / "1")
    export_model(str(standin()), model_dir, frames=8, size=64)  # version 2: random weights
    server = EmbeddedServer(Options(models=config(model_dir, (1, 2)), host="127.0.0.1", port=0, rest_port=None)).start()
    heldout, name = ran / "out" / "corpus" / "heldout", tmp_path / "library"
    demo, random = ran / "out" / "index", tmp_path / "random"
    flags = ["--server", f"127.0.0.1:{server.port}"]
    try:
        assert main_cli([*flags, "index", str(heldout), "--index", str(random), "--model-version", "2"]) == 0
        assert main_cli([*flags, "promote", str(name), str(demo)]) == 0
        capsys.readouterr()
        before = files_of(ran / "out") | files_of(tmp_path)  # the new index, the name, its history and lock
        gate = ["--eval", str(heldout / "queries.csv"), "--videos", str(heldout)]
        assert main_cli([*flags, "promote", str(name), str(random), *gate]) == 1
        out, err = capsys.readouterr()
        figures = out.splitlines()
        assert [f.split(": R@1")[0] for f in figures] == [str(demo), str(random)]
        demo_r1, random_r1 = (float(f.split("R@1 ")[1].split(",")[0]) for f in figures)
        assert demo_r1 >= HELDOUT_R1 > random_r1 and "ranks worse" in err and err.count("\n") == 1
        assert name.resolve() == demo and (files_of(ran / "out") | files_of(tmp_path)) == before
        story = ran / "out" / "corpus" / "story"
        assert main_cli([*flags, "promote", str(name), str(random), "--eval", str(story / "story.csv"), "--videos",
                         str(story)]) == 2  # a set naming a video the new index lacks
        assert "lacks 1 video(s) of the labelled set" in capsys.readouterr().err
        assert main_cli([*flags, "promote", str(name), str(random), *gate, "--force"]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == f"{name}: {demo} (model version 1) -> {random} (model " \
                                                          f"version 2)" and name.resolve() == random
    finally:
        server.stop(grace=5)


def code_blocks(page: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced code block of a markdown page, in order."""
    return [(lang, body) for lang, body in re.findall(r"^```(\w+)\n(.*?)^```$", page.read_text(), re.S | re.M)]


def test_the_tutorial_and_the_readme_run_as_written(demo_run, tmp_path):
    """docs/tutorial.md and the README, run as written: the tutorial's `make` lines are the targets whose commands
    the suite drives (the demo above, the server and the page in their own tests), checked with `make -n`; its
    client commands and its Python run in a checkout-like folder against the demo model, with ~/Videos holding the
    demo's held-out clips; then the README's Python there, indexing ./videos (the same clips)."""
    ran, model_dir, _ = demo_run
    blocks = code_blocks(ROOT / "docs" / "tutorial.md")
    assert [lang for lang, _ in blocks] == ["sh", "sh", "sh", "sh", "python", "sh"]
    makes = {"make demo": "-m serving.demo", "make serve MODEL_DIR=out/demo/models/s3d_milnce":
             "-m serving --model-dir out/demo/models/s3d_milnce", "make ui INDEX=out/my-library":
             "-m client ui --index out/my-library"}
    assert [body.strip() for lang, body in blocks if body.startswith("make ")] == list(makes)
    for line, runs in makes.items():
        dry = subprocess.run([*line.split(), "-n"], cwd=ROOT, capture_output=True, text=True)
        assert dry.returncode == 0 and runs in dry.stdout, (line, dry.stdout, dry.stderr)

    checkout, home = tmp_path / "checkout", tmp_path / "home"
    (checkout / "out").mkdir(parents=True)
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    shutil.copytree(ran / "out" / "corpus" / "heldout", home / "Videos")
    readme = code_blocks(ROOT / "README.md")  # its two make lines (make demo, make test) are this suite
    assert [lang for lang, _ in readme] == ["sh", "python"]
    shutil.copytree(home / "Videos", checkout / "videos")  # the README's Python indexes ./videos
    server = start_server(model_dir)
    env = {**os.environ, "HOME": str(home), "S3D_SERVER": f"127.0.0.1:{server.port}"}

    def run(lang: str, body: str) -> str:
        command = ["bash", "-c", body] if lang == "sh" else [str(ROOT / ".venv/bin/python"), "-c", body]
        done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True)
        assert done.returncode == 0, (body, done.stderr)
        return done.stdout

    try:
        said = [run(lang, body) for lang, body in blocks if not body.startswith("make ")]
        readme_said = run(*readme[1])
    finally:
        server.stop(grace=5)
    in_readme = [line.split()[1] for line in readme_said.splitlines()]
    assert len(set(in_readme)) == 5 and set(in_readme) <= {str(p) for p in (checkout / "videos").glob("*.webm")}
    assert (checkout / "library").is_dir()
    clips = sorted(str(p) for p in (home / "Videos").glob("*.webm"))
    assert "added 32" in said[0]
    listed = [line.split()[1] for line in said[2].splitlines()]  # the Python's three lines: score, video, span
    assert len(listed) == 3 and set(listed) <= set(clips)
    shown = sorted((c for c in clips if c in said[1]), key=said[1].index)  # the CLI's `search --top 3`
    assert shown == listed, (said[1], listed)  # the same three videos in the same order as from Python
