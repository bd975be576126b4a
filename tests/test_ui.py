"""The search service and its page: the API against `search --index --json`, what it refuses to send, range
requests, reloads on commits, errors as JSON, and the page driven in Debian's Chromium."""
from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest

from s3d_retrieval.client import cli
from s3d_retrieval.client.decode.video import Sampling
from s3d_retrieval.client.library.index import Index
from s3d_retrieval.client.library.indexing import index_videos
from s3d_retrieval.client.api import Client
from s3d_retrieval.client.transport.session import Options, Pinned, Session
from tests.conftest import folder_catalog, files_of, write_clip

starlette = pytest.importorskip("starlette", reason="the [ui] extra is not installed: pip install '.[ui]'")
from starlette.testclient import TestClient  # noqa: E402

from s3d_retrieval.client.ui.app import create_app  # noqa: E402

SAMPLING = Sampling(frames=8, size=64)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def world(server, tmp_path_factory):
    """A library of VP8 WebM clips (which Chromium plays), one of them a link to a file outside it, indexed."""
    root = tmp_path_factory.mktemp("ui")
    library, outside = root / "library", root / "outside"
    library.mkdir()
    outside.mkdir()
    for i, frames in enumerate((60, 90, 45, 75)):
        write_clip(library / f"clip{i}.webm", frames, 10, (64, 64), "VP80", seed=i)
    write_clip(outside / "secret.webm", 30, 10, (64, 64), "VP80", seed=9)
    (library / "link.webm").symlink_to(outside / "secret.webm")
    with Session(Options(address=f"127.0.0.1:{server.port}")) as session, \
            Index(root / "index", "s3d_milnce", SAMPLING, create=True) as index:
        assert index_videos(Pinned(session, 1), index, [library]).added == 5
        index.refresh_search()
    return root


@pytest.fixture()
def client(server, world):
    address = f"127.0.0.1:{server.port}"
    with Client(address) as api, Client(address, timeout=10, wait=0) as probe:
        app = create_app(folder_catalog(world / "index", check_every=0), api, probe)
        with TestClient(app) as http:
            http.session = api.session
            yield http


def cli_json(server, *args: str, capsys) -> dict:
    assert cli.main(["--server", f"127.0.0.1:{server.port}", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_answers_what_the_cli_prints(client, server, world, capsys):
    queries = ["a person playing guitar", "cutting tomatoes"]
    expected = cli_json(server, "search", *queries, "--index", str(world / "index"), "--json", "--top", "3",
                        capsys=capsys)
    answer = client.get("/api/search", params=[("q", q) for q in queries] + [("top", "3")])
    assert answer.status_code == 200
    assert answer.json() == expected
    assert [len(r["matches"]) for r in expected["results"]] == [3, 3]


def test_filters_are_the_clis(client, server, world, capsys):
    library = str(world / "library")
    expected = cli_json(server, "search", "dogs", "--index", str(world / "index"), "--json", "--under", library,
                        "--glob", "*clip[12].webm", "--min-duration", "5", capsys=capsys)
    answer = client.get("/api/search", params={"q": "dogs", "under": library, "glob": "*clip[12].webm",
                                               "min_duration": "5"}).json()
    assert answer == expected
    assert {Path(m["video"]).name for m in answer["results"][0]["matches"]} == {"clip1.webm"}


def test_more_like_this_and_several_moments_are_the_clis(client, server, world, capsys):
    video = str(world / "library" / "clip1.webm")
    args = ["--like", f"{video}@2.5", "--top", "3", "--moments", "2", "--json"]
    expected = cli_json(server, "search", "a dog", *args, "--index", str(world / "index"), capsys=capsys)
    answer = client.get("/api/search", params={"q": "a dog", "like": f"{video}@2.5", "top": "3", "moments": "2"})
    assert answer.status_code == 200 and answer.json() == expected
    assert [r["query"] for r in expected["results"]] == ["a dog", f"like {video}@2.5"]
    for text, status in ((f"{video}", 400), (f"{world / 'library' / 'nothere.webm'}@1", 400)):
        refused = client.get("/api/search", params={"like": text})
        assert refused.status_code == status and "like" in refused.json()["error"]
    assert client.get("/api/search", params={"q": "x", "moments": "0"}).status_code == 400


def test_repeated_queries_are_embedded_once(client):
    client.get("/api/search", params={"q": "a cat on a sofa"})
    before = client.session.requests
    again = client.get("/api/search", params={"q": "a cat on a sofa"})
    assert again.status_code == 200 and client.session.requests == before + 1  # the served-version check, no Predict


def test_videos_and_health(client, world):
    videos = client.get("/api/videos").json()["videos"]
    assert sorted(Path(v["video"]).name for v in videos) == ["clip0.webm", "clip1.webm", "clip2.webm",
                                                              "clip3.webm", "link.webm"]
    assert all(v["windows"] >= 1 and v["duration"] > 0 for v in videos)
    health = client.get("/api/health")
    assert health.status_code == 200
    body = health.json()
    assert body["ok"] and body["index"]["videos"] == 5 and body["model_server"]["version"] == 1
    assert body["index"]["model_version"] == 1 and body["model_server"]["versions"] == [1]


def test_a_range_request_gets_206_and_the_right_bytes(client, world):
    path = world / "library" / "clip1.webm"
    data = path.read_bytes()
    answer = client.get("/api/media", params={"video": str(path)}, headers={"Range": "bytes=100-499"})
    assert answer.status_code == 206
    assert answer.content == data[100:500]
    assert answer.headers["content-range"] == f"bytes 100-499/{len(data)}"
    assert answer.headers["content-type"] == "video/webm"
    whole = client.get("/api/media", params={"video": str(path)})
    assert whole.status_code == 200 and whole.content == data and whole.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize("video", [
    "/etc/passwd",
    "{library}/../outside/secret.webm",
    "{library}/./clip1.webm",
    "{library}//clip1.webm",
    "clip1.webm",
    "../outside/secret.webm",
    "{library}/%2e%2e/outside/secret.webm",
    "{library}/clip1.webm/..",
    "",
])
def test_only_indexed_paths_are_sent(client, world, video):
    video = video.format(library=world / "library")
    for endpoint in ("/api/media", "/api/still"):
        answer = client.get(endpoint, params={"video": video})
        assert answer.status_code in (400, 404), (endpoint, video, answer.status_code)
        assert answer.json()["error"]


def test_encoded_traversal_in_the_address_is_refused(client):
    for address in ("/api/media?video=%2Fetc%2Fpasswd", "/static/..%2F..%2Fcatalog.py", "/static/../app.py",
                    "/static/%2e%2e/%2e%2e/catalog.py"):
        answer = client.get(address)
        assert answer.status_code == 404, address
        assert "error" in answer.json()


def test_links_out_of_the_library_and_changed_files_are_refused(client, world):
    link = world / "library" / "link.webm"
    answer = client.get("/api/media", params={"video": str(link)})
    assert answer.status_code == 403 and "outside the library" in answer.json()["error"]
    target = world / "library" / "clip3.webm"
    saved = world / "clip3.saved"
    shutil.copy2(target, saved)
    try:  # an indexed file swapped for a link to a file out of the library
        target.unlink()
        target.symlink_to(world / "outside" / "secret.webm")
        assert client.get("/api/media", params={"video": str(target)}).status_code == 403
        target.unlink()
        target.write_bytes(saved.read_bytes() + b"more")  # changed since it was indexed
        answer = client.get("/api/media", params={"video": str(target)})
        assert answer.status_code == 409 and "index again" in answer.json()["error"]
    finally:
        target.unlink()
        shutil.copy2(saved, target)
    assert client.get("/api/media", params={"video": str(target)}).status_code == 200


def test_the_index_reloads_on_commits(server, world, tmp_path):
    folder = tmp_path / "index"
    shutil.copytree(world / "index", folder)
    extra = write_clip(world / "library" / "late.webm", 40, 10, (64, 64), "VP80", seed=5)
    try:
        with Client(f"127.0.0.1:{server.port}") as api, TestClient(
                create_app(folder_catalog(folder, check_every=0), api, api)) as http:
            assert len(http.get("/api/videos").json()["videos"]) == 5
            with Index(folder, "s3d_milnce", SAMPLING) as index:  # a writer commits: no refresh_search of its own
                assert index_videos(api.pinned(), index, [extra]).added == 1
            names = {Path(v["video"]).name for v in http.get("/api/videos").json()["videos"]}
            assert "late.webm" in names and len(names) == 6
            assert http.get("/api/media", params={"video": str(extra)}).status_code == 200
            found = http.get("/api/search", params={"q": "anything", "top": "6"}).json()["results"][0]["matches"]
            assert str(extra) in {m["video"] for m in found}
            with Index(folder, "s3d_milnce") as index:
                assert index.remove([extra]) == 1
            assert len(http.get("/api/videos").json()["videos"]) == 5
            assert http.get("/api/media", params={"video": str(extra)}).status_code == 404
    finally:
        extra.unlink()


def test_a_structure_behind_the_index_answers_for_every_video_and_the_page_writes_nothing(server, world, tmp_path,
                                                                                        capsys):
    folder = tmp_path / "index"
    shutil.copytree(world / "index", folder)
    extra = write_clip(world / "library" / "later.webm", 40, 10, (64, 64), "VP80", seed=6)
    try:
        with Client(f"127.0.0.1:{server.port}") as api, TestClient(
                create_app(folder_catalog(folder, check_every=0), api, api)) as http:
            with Index(folder, "s3d_milnce", SAMPLING) as index:
                index_videos(api.pinned(), index, [extra])  # a writer commits and has not rebuilt the structure yet
            before = files_of(folder)
            health = http.get("/api/health").json()
            assert health["ok"] and "1 of 6 videos are scored exactly" in health["index"]["stale"]
            found = http.get("/api/search", params={"q": "x", "top": "10"}).json()
            assert "behind the index" in found["warnings"][-1]
            assert str(extra) in {m["video"] for m in found["results"][0]["matches"]}  # scored from its shard
            assert found["results"] == cli_json(server, "search", "x", "--index", str(folder), "--json", "--top",
                                                "10", capsys=capsys)["results"]  # one code path, one answer
            assert files_of(folder) == before  # the page and search --index read; neither wrote
            with Index(folder, "s3d_milnce") as index:
                index.refresh_search()  # what the writer does when it finishes
            assert http.get("/api/health").json()["index"]["stale"] is None
            after = http.get("/api/search", params={"q": "x", "top": "10"}).json()
            assert not [w for w in after["warnings"] if "behind" in w]
            matches = lambda doc: doc["results"][0]["matches"]  # noqa: E731
            assert [m["video"] for m in matches(after)] == [m["video"] for m in matches(found)]
            assert [m["score"] for m in matches(after)] == pytest.approx([m["score"] for m in matches(found)],
                                                                         rel=1e-5)
    finally:
        extra.unlink()


def test_errors_are_json(client, world):
    for params, status in (({}, 400), ({"q": "  "}, 400), ({"q": "x", "top": "many"}, 400),
                           ({"q": "x", "top": "0"}, 400), ({"q": "x", "min_duration": "nan"}, 400)):
        answer = client.get("/api/search", params=params)
        assert answer.status_code == status and answer.json()["error"], params
    assert client.get("/api/nothing").json()["error"]


def test_a_model_server_that_is_down_is_a_503_the_page_can_show(world):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    with Client(closed, wait=0, timeout=2) as down, TestClient(
            create_app(folder_catalog(world / "index"), down, down)) as http:
        answer = http.get("/api/search", params={"q": "guitar"})
        assert answer.status_code == 503 and "cannot reach the model server" in answer.json()["error"]
        health = http.get("/api/health")
        assert health.status_code == 503 and health.json()["index"]["loaded"]
        assert health.json()["error"].startswith("model server:") and not health.json()["model_server"]["reachable"]
        assert http.get("/api/health", params={"probe": "live"}).status_code == 200


def test_an_index_gone_while_served_is_a_503_the_page_can_show(server, world, tmp_path):
    folder = tmp_path / "gone"
    shutil.copytree(world / "index", folder)
    with Client(f"127.0.0.1:{server.port}") as api, TestClient(
            create_app(folder_catalog(folder, check_every=0), api, api)) as http:
        assert http.get("/api/search?q=guitar").status_code == 200
        shutil.rmtree(folder)
        for address in ("/api/search?q=guitar", "/api/videos", "/api/health"):
            answer = http.get(address)
            assert answer.status_code == 503, address
            assert answer.json()["error"].startswith(f"index: {folder}: cannot read the index"), answer.json()
        assert http.get("/api/health").json()["model_server"]["reachable"]


def test_the_verb_refuses_a_missing_index_and_a_busy_port(world, tmp_path, capsys):
    assert cli.main(["ui", "--index", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no index here" in err and len(err.strip().splitlines()) == 1
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = str(busy.getsockname()[1])
        assert cli.main(["ui", "--index", str(world / "index"), "--port", port]) == 2
    err = capsys.readouterr().err
    assert err == f"error: cannot listen on 127.0.0.1:{port} (Address already in use); pick another --port or " \
                  f"--host, or stop what uses it\n"


@pytest.fixture()
def page(server, world):
    """The service on a loopback port (the socket is bound before the server starts, so no waiting) and
    Chromium on it."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"the browser test needs Debian's Chromium at {CHROMIUM}: run `make browser` as root "
                    f"(apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make setup)")
    from s3d_retrieval.client.ui.server import in_thread

    with Client(f"127.0.0.1:{server.port}") as api, \
            in_thread(create_app(folder_catalog(world / "index"), api, api)) as root, \
            playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"])
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 900}), root
        finally:
            browser.close()


def test_the_page_searches_and_plays_the_moment(page, world, tmp_path):
    page, root = page
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("requestfailed", lambda req: errors.append(req.url))
    page.goto(root + "/")
    page.focus("button[type=submit]")
    page.keyboard.press("/")  # focuses the search box
    page.keyboard.type("someone playing a guitar")
    page.keyboard.press("Enter")
    page.wait_for_selector(".moment")
    assert page.locator(".card").count() == 5  # every video of the index, top 10
    cards = page.locator(".moment:not(.extra)")
    assert page.evaluate("[...document.querySelectorAll('.moment img')].every(i => i.src.includes('/api/still'))")
    later = page.evaluate("[...document.querySelectorAll('.moment')].findIndex(c => Number(c.dataset.start) > 0)")
    assert later >= 0, "every best window starts at 0: the click below would prove nothing"
    start = float(cards.nth(later).get_attribute("data-start"))
    # Where each seek landed, read at its `seeked` event: the player plays on from there, so a later look at
    # currentTime would depend on how fast this machine gets to it.
    page.evaluate("(p => { window.seeks = []; p.addEventListener('seeked', () => seeks.push(p.currentTime)); })"
                  "(document.getElementById('player'))")
    cards.nth(later).click()
    page.wait_for_function("window.seeks.length >= 1")
    assert page.evaluate("seeks[seeks.length - 1]") == pytest.approx(start, abs=0.3)
    left = page.evaluate("parseFloat(document.getElementById('span').style.left)")
    duration = page.evaluate("document.getElementById('player').duration")
    assert left == pytest.approx(100 * start / duration, abs=0.5)
    assert "q=someone+playing+a+guitar" in page.url
    focused = "[...document.querySelectorAll('.moment')].indexOf(document.activeElement)"
    page.keyboard.press("ArrowUp")  # keyboard: moments are reachable without a mouse
    assert page.evaluate(focused) == later - 1 if later else page.evaluate("document.activeElement.id") == "q"
    page.focus("#q")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert page.evaluate(focused) == 1
    seeks = page.evaluate("seeks.length")
    page.keyboard.press("Enter")  # plays the focused moment
    second = float(cards.nth(1).get_attribute("data-start"))
    page.wait_for_function(f"window.seeks.length > {seeks}")
    assert page.evaluate("seeks[seeks.length - 1]") == pytest.approx(second, abs=0.3)
    assert page.evaluate("document.querySelector('[aria-current=true]') === document.activeElement")
    shown = {"video": cards.nth(1).get_attribute("data-video"), "start": float(cards.nth(1).get_attribute("data-start")),
             "end": float(cards.nth(1).get_attribute("data-end"))}
    page.locator(".like").nth(1).click()  # more like this: the moments that look like the second card's
    page.wait_for_function("location.search.includes('like=')")
    page.wait_for_selector(".moment")
    found = page.evaluate("[...document.querySelectorAll('.moment')].map(b => ({...b.dataset}))")
    assert found and not any(f["video"] == shown["video"] and float(f["start"]) < shown["end"]
                             and float(f["end"]) > shown["start"] for f in found)  # the moment itself is left out
    assert page.input_value("#q") == "" and "moments like" in page.inner_text("#status")
    page.screenshot(path=str(tmp_path / "page.png"))
    assert (tmp_path / "page.png").stat().st_size > 1000
    assert not errors, errors


def test_the_page_shows_a_service_error(page):
    page, root = page
    message = "model server: cannot reach the model server at tf-serving:8500"
    page.route("**/api/search?*", lambda route: route.fulfill(status=503, json={"error": message}))
    page.goto(root + "/?q=guitar")
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == message
    assert page.locator(".moment").count() == 0
