"""Changing the model without wrong answers (#32): the embedded server's version labels, `specific` policies and
config reload as TF Serving's ServerCore does them; indexes pinned to the model version that embedded them;
promote and rollback of a name readers follow; Milvus aliases."""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from s3d_retrieval.client.api import Client
from s3d_retrieval.client.cli import main
from s3d_retrieval.client.defaults import MODEL_NAME
from s3d_retrieval.client.library.index import Index
from s3d_retrieval.export.pipeline import export_model
from s3d_retrieval.serving.embedded.errors import ServingError
from s3d_retrieval.serving.embedded.server import EmbeddedServer, Options
from tests.conftest import files_of, folder_catalog
from tests.test_index import SAMPLING, library  # noqa: F401 - the fixture

QUERIES = ["a dog", "a red ball", "water"]


def config(base: Path, versions: tuple[int, ...], **labels: int) -> model_server_config_pb2.ModelServerConfig:
    """A models.config serving `versions` (specific) of the model at `base`, with `labels`."""
    text = (f"model_config_list {{ config {{ name: '{MODEL_NAME}' base_path: '{base}' model_platform: 'tensorflow' "
            f"model_version_policy {{ specific {{ {' '.join(f'versions: {v}' for v in versions)} }} }} "
            + " ".join(f"version_labels {{ key: '{k}' value: {v} }}" for k, v in labels.items()) + " } }")
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


@pytest.fixture(scope="module")
def two_versions(model_dir, standin, tmp_path_factory) -> Path:
    """Version 1 (the stand-in of seed 0) and version 2 (seed 1: other weights, other embeddings)."""
    base = tmp_path_factory.mktemp("two") / MODEL_NAME
    shutil.copytree(model_dir / "1", base / "1")
    export_model(str(standin(seed=1)), base, frames=8, size=64)
    return base


@pytest.fixture(scope="module")
def served(two_versions, tmp_path_factory):
    """The embedded server serving both versions, stable=1 and canary=2, reading its config file again every
    0.1 s; `served.read` is set each time its poller read the file (whatever it found), `served.applied` each time
    a config read was applied (or refused)."""
    file = tmp_path_factory.mktemp("config") / "models.config"
    file.write_text(text_format.MessageToString(config(two_versions, (1, 2), stable=1, canary=2)))
    read = threading.Event()

    def source() -> model_server_config_pb2.ModelServerConfig:
        try:
            return text_format.Parse(file.read_text(), model_server_config_pb2.ModelServerConfig())
        finally:
            read.set()

    server = EmbeddedServer(Options(
        models=config(two_versions, (1, 2), stable=1, canary=2), host="127.0.0.1", port=0, rest_port=0,
        poll_seconds=0.1, allow_unavailable_labels=True, config_poll_seconds=0.1, config_source=source))
    server.read = read
    real, server.applied = server.manager.reload, threading.Event()

    def reload(models):
        try:
            real(models)
        finally:
            server.applied.set()

    server.manager.reload = reload
    server.start()
    server.file = file
    yield server
    server.stop(grace=5)


def apply(server, models: model_server_config_pb2.ModelServerConfig) -> None:
    """Write the server's config file and wait until its poller applied it (an event, not a sleep)."""
    server.file.write_text(text_format.MessageToString(models))
    server.applied.clear()
    assert server.applied.wait(timeout=60)
    server.applied.clear()
    assert server.applied.wait(timeout=60)  # a whole poll after the write: the new text was read


def restore(server, base: Path) -> None:
    """Back to both versions, stable=1: in two steps, as TF Serving needs (a label moves only to a loaded version)."""
    apply(server, config(base, (1, 2), stable=2, canary=2))
    apply(server, config(base, (1, 2), stable=1, canary=2))


def ask(server, label: str | None = None, version: int | None = None) -> int:
    """The version that answers a Predict by label or number (the official stubs)."""
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    if label is not None:
        request.model_spec.version_label = label
    if version is not None:
        request.model_spec.version.value = version
    request.model_spec.signature_name = "text"
    request.inputs["words"].CopyFrom(__import__("tensorflow").make_tensor_proto(np.array([b"a dog"], object)))
    return stub.Predict(request, timeout=60).model_spec.version.value


def cli(server, *args: str) -> int:
    return main(["--server", f"127.0.0.1:{server.port}", *args])


# --- the embedded server, as TF Serving -----------------------------------------------------------------------

def test_labels_at_start_need_the_flag_as_tf_serving_does(two_versions):
    server = EmbeddedServer(Options(models=config(two_versions, (1, 2), stable=1), host="127.0.0.1", port=0,
                                    rest_port=None))
    with pytest.raises(ServingError) as refused:  # nothing is loaded when the first config's labels are set
        server.start()
    assert refused.value.code == grpc.StatusCode.FAILED_PRECONDITION and refused.value.message == (
        f"Request to assign label to version 1 of model {MODEL_NAME}, which is not currently available for inference")
    server.stop(grace=1)


def test_requests_by_label_and_version_and_the_labels_a_client_sees(served):
    import urllib.request

    assert (ask(served, "stable"), ask(served, "canary"), ask(served, version=2)) == (1, 2, 2)
    with pytest.raises(grpc.RpcError) as unknown:
        ask(served, "nope")
    assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.value.details() == "Unrecognized servable version label: nope"
    with pytest.raises(grpc.RpcError) as missing:
        ask(served, version=3)
    assert missing.value.details() == f"Servable not found for request: Specific({MODEL_NAME}, 3)"
    rest = f"http://127.0.0.1:{served.rest.port}/v1/models/{MODEL_NAME}"
    with urllib.request.urlopen(f"{rest}/labels/canary/metadata") as answer:
        assert json.load(answer)["model_spec"]["version"] == "2"
    with urllib.request.urlopen(f"{rest}/labels/canary") as answer:  # status: every version, as TF Serving
        assert [v["version"] for v in json.load(answer)["model_version_status"]] == ["2", "1"]
    with Client(f"127.0.0.1:{served.port}") as client:
        assert client.labels() == {"stable": 1, "canary": 2} and client.model_version() == 1  # stable's
        assert client.model_version(model_label="canary") == 2


def test_the_config_is_read_again_labels_move_and_versions_unload_without_a_failed_request(served, two_versions):
    failures, answers, stop, retiring = [], [], threading.Event(), threading.Event()

    def traffic():  # by label, and by version 1 until it is retired: whatever a label names, none may fail
        while not stop.is_set():
            for label, version in (("stable", None), *([] if retiring.is_set() else [(None, 1)])):
                try:
                    answers.append(ask(served, label, version))
                except grpc.RpcError as err:
                    failures.append(err.details())

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        apply(served, config(two_versions, (1, 2), stable=2, canary=2))  # move stable while both are loaded
        assert ask(served, "stable") == 2
        retiring.set()
        apply(served, config(two_versions, (2,), stable=2))  # then retire version 1
        states = {s.version: s.state for s in __import__("tests.test_serving", fromlist=["Client"]).Client(
            served.port).status().model_version_status}
        assert states[2] == 30 and states[1] == 50  # AVAILABLE, END
        apply(served, config(two_versions, (2,), stable=7))  # a label on a version not loaded: refused whole
        assert ask(served, "stable") == 2
        for text in ("model_config_list { config { name: ", ""):  # half written, or empty: the config before serves
            served.file.write_text(text)
            for _ in range(2):  # a whole read after the write
                served.read.clear()
                assert served.read.wait(timeout=60)
            assert ask(served, "stable") == 2
    finally:
        stop.set()
        sender.join(timeout=60)
        restore(served, two_versions)
    assert not failures and set(answers) <= {1, 2} and 1 in answers and answers[-1] == 2


# --- indexes pinned to their version ---------------------------------------------------------------------------

def test_an_index_keeps_its_answers_mixing_is_refused_and_a_version_gone_is_one_line(served, two_versions, library,
                                                                                     tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert cli(served, "index", str(library), "--index", str(one), "--size", "64") == 0  # stable: version 1
    assert cli(served, "index", str(library), "--index", str(two), "--size", "64", "--model-label", "canary") == 0
    capsys.readouterr()
    with Index(one, MODEL_NAME, read_only=True) as a, Index(two, MODEL_NAME, read_only=True) as b:
        assert (a.model_version, b.model_version) == (1, 2)
    asked = ["search", *QUERIES, "--top", "3", "--json", "--index"]
    assert cli(served, *asked, str(one)) == 0
    before = json.loads(capsys.readouterr().out)
    assert cli(served, *asked, str(two)) == 0
    assert json.loads(capsys.readouterr().out) != before  # two versions, two spaces
    try:
        apply(served, config(two_versions, (1, 2), stable=2, canary=2))  # the server's default moves on
        assert cli(served, *asked, str(one)) == 0
        assert json.loads(capsys.readouterr().out) == before  # to the score: still version 1's
        kept = files_of(one)
        assert cli(served, "index", str(library), "--index", str(one), "--model-version", "2") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "holds model version 1, not 2" in err[0] and files_of(one) == kept
        apply(served, config(two_versions, (2,), stable=2))  # version 1 retired
        assert cli(served, *asked, str(one)) == 2
        out, err = capsys.readouterr()
        assert not out and err == (f"error: {one} holds model version 1, which the model server at 127.0.0.1:"
                                   f"{served.port} does not serve (it serves version 2 (stable=2)): serve version 1 "
                                   f"again (models.config), or rebuild the index with a served version and promote "
                                   f"it\n")
        page(served, one, err.removeprefix("error: ").strip())
    finally:
        restore(served, two_versions)


def page(served, folder: Path, sentence: str) -> None:
    """The page over an index whose version is not served: 503 with the same sentence, health names the version."""
    from starlette.testclient import TestClient

    from s3d_retrieval.client.ui.app import create_app

    with Client(f"127.0.0.1:{served.port}") as api, \
            TestClient(create_app(folder_catalog(folder, check_every=0), api, api)) as http:
        answer = http.get("/api/search", params={"q": "a dog"})
        assert answer.status_code == 503 and answer.json()["error"] == f"model server: {sentence}"
        health = http.get("/api/health")
        assert health.status_code == 503 and health.json()["index"]["model_version"] == 1
        assert health.json()["model_server"]["versions"] == [2]


def test_an_index_of_an_earlier_release_holding_two_versions_says_how_to_rebuild(tmp_path, served, capsys):
    from s3d_retrieval.client.library.store import Entry

    folder = tmp_path / "old"
    with Index(folder, MODEL_NAME, SAMPLING, create=True, model_version=1) as index:
        index.commit([Entry("/lib/a.mp4", "a", 1, 1.0, 1, 1.0, "", 0, 0)], [np.ones((1, 512), np.float32)],
                     [np.zeros((1, 2))])
        index.db.execute("DELETE FROM meta WHERE key = 'model_version'")  # as an earlier release wrote it
        index.db.execute("INSERT INTO videos SELECT 'b', sha256, size, mtime, 2, duration, shard, first_row, "
                         "row_count, indexed_at FROM videos")
        index.db.commit()
    assert cli(served, "search", "a dog", "--index", str(folder)) == 2
    err = capsys.readouterr().err
    assert "holds embeddings of model versions [1, 2]" in err and "rebuild it" in err and err.count("\n") == 1


# --- promote and rollback --------------------------------------------------------------------------------------

def test_promote_rollback_and_what_they_refuse(served, library, tmp_path, capsys):
    one, two, name = tmp_path / "one", tmp_path / "two", tmp_path / "lib"
    for folder, version in ((one, "1"), (two, "2")):
        assert cli(served, "index", str(library), "--index", str(folder), "--size", "64", "--model-version",
                   version) == 0
    capsys.readouterr()
    assert cli(served, "promote", str(name), str(one)) == 0
    assert capsys.readouterr().out == f"{name}: (nothing) -> {one} (model version 1)\n"
    assert cli(served, "search", "a dog", "--top", "9", "--json", "--index", str(name)) == 0
    assert cli(served, "search", "a dog", "--top", "9", "--json", "--index", str(one)) == 0
    via_name, direct = capsys.readouterr().out.split("\n}\n")[:2]
    assert via_name == direct
    assert cli(served, "promote", str(name), str(two)) == 0
    assert capsys.readouterr().out == f"{name}: {one} (model version 1) -> {two} (model version 2)\n"
    assert name.is_symlink() and Path(name.readlink()) == Path("two")  # relative: the pair can be mounted anywhere
    assert cli(served, "rollback", str(name)) == 0
    assert capsys.readouterr().out == f"{name}: {two} (model version 2) -> {one} (model version 1)\n"
    assert cli(served, "rollback", str(name)) == 2
    assert "no earlier index to roll back to" in capsys.readouterr().err
    other, unserved = tmp_path / "other", tmp_path / "seven"
    Index(other, "another_model", SAMPLING, create=True).close()
    Index(unserved, MODEL_NAME, SAMPLING, create=True, model_version=7).close()
    before = files_of(tmp_path)
    for args, why in (((str(name), str(tmp_path / "nothing")), "no index here"),
                      ((str(one), str(two)), "not a name"), ((str(name), str(other)), "another_model"),
                      ((str(name), str(one)), "points at"), ((str(name), str(unserved)), "does not serve"),
                      ((str(tmp_path / "no" / "lib"), str(two)), "no such folder")):
        assert cli(served, "promote", *args) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and why in err[0], err
    assert files_of(tmp_path) == before
    assert cli(served, "promote", str(name), str(unserved), "--force") == 0  # whatever the server serves
    name.unlink()
    (tmp_path / "gone").symlink_to(two)
    (tmp_path / "gone").rename(name)  # moved by hand, behind the history's back
    assert cli(served, "rollback", str(name)) == 2
    assert "as its history says" in capsys.readouterr().err
    shutil.rmtree(unserved)
    name.unlink()
    name.symlink_to(unserved)  # a name whose index is gone is pointed again
    assert cli(served, "promote", str(name), str(one)) == 0
    assert capsys.readouterr().out.endswith(f"{name}: {unserved} (model version None) -> {one} (model version 1)\n")


def test_readers_follow_a_promote_with_no_failed_request_each_answer_from_one_index(served, library, tmp_path):
    from starlette.testclient import TestClient

    from s3d_retrieval.client.ui.app import create_app

    one, two, name = tmp_path / "one", tmp_path / "two", tmp_path / "lib"
    with Client(f"127.0.0.1:{served.port}") as api:
        api.index(library, index=one, sampling=SAMPLING, model_version=1)
        api.index(library, index=two, sampling=SAMPLING, model_version=2)
        api.promote(name, one)
        answers = {str(f): api.search(QUERIES, index=f, top=3).as_json() for f in (one, two)}
        seen: list[dict] = []
        failures: list[str] = []
        promoted = threading.Event()
        asking = threading.Event()
        with TestClient(create_app(folder_catalog(name, check_every=0), api, api)) as http:
            def loop() -> None:  # the API and the page, asked before, during and after the name moves
                while True:
                    done = promoted.is_set()
                    try:
                        page = http.get("/api/search", params=[("q", q) for q in QUERIES] + [("top", "3")])
                        if page.status_code != 200:
                            failures.append(page.text)
                        seen.append(page.json())
                        seen.append(api.search(QUERIES, index=name, top=3).as_json())
                    except Exception as err:  # noqa: BLE001 - any failure is counted, not lost with the thread
                        failures.append(repr(err))
                    asking.set()
                    if done:
                        return

            reader = threading.Thread(target=loop)
            reader.start()
            assert asking.wait(timeout=120)  # answered from the first index before the move
            assert api.promote(name, two).now_version == 2
            promoted.set()
            reader.join(timeout=120)
    assert not failures and seen
    assert all(doc in answers.values() for doc in seen)  # each from exactly one index
    assert seen[-1] == seen[-2] == answers[str(two)]  # and both followed it


# --- Milvus aliases --------------------------------------------------------------------------------------------

def test_a_milvus_alias_is_promoted_followed_and_rolled_back(served, library, tmp_path, capsys):
    uri = str(tmp_path / "lib.db")
    milvus = ["--milvus", uri, "--collection"]
    for collection, version in (("lib_v1", "1"), ("lib_v2", "2")):
        assert cli(served, "index", str(library), *milvus, collection, "--size", "64", "--model-version",
                   version) == 0
    capsys.readouterr()
    asked = ["search", *QUERIES, "--top", "3", "--json", *milvus]
    expected = {}
    for collection in ("lib_v1", "lib_v2"):
        assert cli(served, *asked, collection) == 0
        expected[collection] = json.loads(capsys.readouterr().out)
    assert cli(served, "promote", "--milvus", uri, "lib", "lib_v1") == 0
    assert cli(served, "promote", "--milvus", uri, "lib", "lib_v2") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == f"lib ({uri}): lib_v1 (model version 1) -> lib_v2 (model version 2)"
    with Client(f"127.0.0.1:{served.port}") as api:
        from s3d_retrieval.client.milvus.store import Milvus

        assert api.search(QUERIES, index=Milvus(uri, "lib"), top=3).as_json() == expected["lib_v2"]
        api.rollback(Milvus(uri, "lib"))
        assert api.search(QUERIES, index=Milvus(uri, "lib"), top=3).as_json() == expected["lib_v1"]  # followed
    assert cli(served, "promote", "--milvus", uri, "lib_v1", "lib_v2") == 2  # a collection is no name
    assert "is a collection" in capsys.readouterr().err
    labelled = tmp_path / "labelled"
    labelled.mkdir()
    shutil.copy(library / "clip0.avi", labelled / "extra.avi")  # a video no collection holds
    (labelled / "set.csv").write_text("video_id,sentence\nextra,a dog\n")
    assert cli(served, "promote", "--milvus", uri, "lib", "lib_v2", "--eval", str(labelled / "set.csv"), "--videos",
               str(labelled)) == 2  # the gate's own refusal, not a Milvus failure
    assert "lacks 1 video(s) of the labelled set" in capsys.readouterr().err


def test_a_name_always_resolves_while_promote_moves_it(tmp_path, monkeypatch):
    """The swap is one atomic rename: at every file-system call promote makes, the name still points at an index
    (the old one until the rename, the new one after), never at nothing."""
    import os

    from s3d_retrieval.client.library.index import Folder
    from s3d_retrieval.client.library.promote import FolderName

    old, new, name = tmp_path / "lib-v1", tmp_path / "lib-v2", FolderName(tmp_path / "lib")
    old.mkdir()
    new.mkdir()
    name.point(Folder(old))
    seen: list[str] = []

    def watched(call):
        def run(*args, **kwargs):
            seen.append(os.path.realpath(name.path))
            assert name.path.exists(), f"{call.__name__}{args}: the name resolves to nothing"
            return call(*args, **kwargs)
        return run

    for call in ("symlink", "replace", "rename", "unlink", "remove"):
        monkeypatch.setattr(os, call, watched(getattr(os, call)))
    name.point(Folder(new))
    monkeypatch.undo()
    assert os.path.realpath(name.path) == str(new) and seen and set(seen) == {str(old)}
