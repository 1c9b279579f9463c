"""The viewer (`eval.viewer`): its API refusing what it must (requests without the printed URL's token, paths
outside the data, malformed requests of any depth, a broken case, a save into a deleted folder) without going down,
clicks, boxes and propagation giving exactly eval.predict's mask, memory holding `cases_in_memory` cases however many
tabs are open, the port checked before the model loads, and the page driven in a real headless Chromium: open a case,
click the tumour, see its mask and Dice, propagate, edit, undo, save, download; drag a box and propagate it.

One model (the tiny run trained on the phantom), one server and one browser serve the whole module. References are
computed here from the NIfTI files: the ground truth, the Dice, the voxel clicked, the box, the saved file's
geometry."""

from __future__ import annotations

import gc
import http.client
import http.cookiejar
import json
import shutil
import socket
import threading
import time
import types
import urllib.error
import urllib.parse
import urllib.request
import weakref

import nibabel as nib
import numpy as np
import pytest
from apps import start_app
from scipy import ndimage
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait
from starlette.testclient import TestClient

from sam_jax.data import find_cases, load_case
from sam_jax.evaluation import load_trained
from sam_jax.evaluation.prediction import predict_volume
from sam_jax.evaluation.segmenter import SliceSegmenter
from sam_jax.evaluation.volume import prepare_volume
from sam_jax.viewer import build_app
from sam_jax.viewer import cases as cases_module
from sam_jax.viewer.access import cookie_name, new_token
from sam_jax.viewer.cases import CaseStore
from sam_jax.viewer.serving import bind, make_server, url

GOOD, NO_SEG, BROKEN = "BraTS-GLI-00000-000", "BraTS-GLI-00005-000", "BraTS-GLI-00009-000"
BOX = (64, 56, 12)  # voxels kept around the phantom tumour's centre: a case that encodes in a second
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # .ci/run installs both
WAIT_S = 120  # generous: CI shares two cores with the rest of the suite
TOKEN = new_token()


@pytest.fixture(scope="module")
def data_dir(phantom_dir, tmp_path_factory):
    """The phantom's GLI case cut to BOX around its tumour (affine and header kept), the same without its
    segmentation, one whose T1 is not a NIfTI file, and a file beside the data directory that no request may
    reach."""
    root = tmp_path_factory.mktemp("viewer")
    data = root / "data"
    files = find_cases(phantom_dir, "GLI")[0]
    seg = np.asarray(nib.load(files.seg).dataobj) > 0
    centre = [int(np.mean(i)) for i in np.nonzero(seg)]
    box = tuple(slice(max(c - n // 2, 0), max(c - n // 2, 0) + n) for c, n in zip(centre, BOX))
    (data / GOOD).mkdir(parents=True)
    for path in [*files.images.values(), files.seg]:
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[box], image.affine, image.header), data / GOOD / path.name)
    for other in (NO_SEG, BROKEN):
        shutil.copytree(data / GOOD, data / other)
        for path in (data / other).iterdir():
            path.rename(path.with_name(path.name.replace(GOOD, other)))
    (data / NO_SEG / f"{NO_SEG}-seg.nii.gz").unlink()
    (data / BROKEN / f"{BROKEN}-t1n.nii.gz").write_bytes(b"not a NIfTI file")
    (root / "secret.txt").write_text("outside the data directory")
    return data


@pytest.fixture(scope="module")
def viewer(tiny_trained_run, data_dir, tmp_path_factory):
    trained = load_trained(tiny_trained_run)
    segmenter = SliceSegmenter(trained, batch_size=8)
    output = tmp_path_factory.mktemp("viewer_out")
    store = CaseStore(data_dir, segmenter, trained.spec, warm_clicks=2)
    return types.SimpleNamespace(
        app=build_app(store, segmenter, output, token=TOKEN),
        segmenter=segmenter,
        spec=trained.spec,
        output=output,
        data=data_dir,
    )


def _signed_in(client: TestClient) -> TestClient:
    """The client once it has opened the page with the token, as the printed URL does: the cookie it got carries
    the token from then on."""
    page = client.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and cookie_name(TOKEN) in client.cookies, page.text
    return client


@pytest.fixture(scope="module")
def client(viewer):
    with TestClient(viewer.app) as c:
        yield _signed_in(c)


@pytest.fixture(scope="module")
def server(viewer):
    """The app on a free port of localhost (the default), served as `python -m eval.viewer` serves it."""
    sock = bind(port=0)
    assert sock.getsockname()[0] == "127.0.0.1"
    running = make_server(viewer.app)
    thread = threading.Thread(target=running.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not running.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the viewer's server did not start"
        time.sleep(0.05)
    yield url(sock, TOKEN)
    running.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through the system's chromedriver (no download; fails, not skips, when they are missing)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def _tumour(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """(whole tumour (X, Y, Z) bool, affine) read from the segmentation file."""
    image = nib.load(data_dir / GOOD / f"{GOOD}-seg.nii.gz")
    return np.asarray(image.dataobj) > 0, image.affine


def _target(tumour: np.ndarray) -> tuple[int, int, int]:
    """The interior-most voxel of the tumour's largest axial section."""
    z = int(np.argmax(tumour.sum(axis=(0, 1))))
    depth = ndimage.distance_transform_edt(np.pad(tumour[:, :, z], 1))[1:-1, 1:-1]
    x, y = np.unravel_index(np.argmax(depth), depth.shape)
    return int(x), int(y), z


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


def _session(client, case=GOOD) -> str:
    answer = client.post("/api/sessions", json={"case": case})
    assert answer.status_code == 201, answer.text
    return f"/api/sessions/{answer.json()['session']}"


def _tight_box(tumour: np.ndarray, z: int) -> dict:
    """The tumour's tight box on axial slice z, as the API takes it (inclusive voxel corners)."""
    xs, ys = np.nonzero(tumour[:, :, z])
    return dict(x0=int(xs.min()), y0=int(ys.min()), x1=int(xs.max()), y1=int(ys.max()), z=z)


def _ready(client, session: str) -> None:
    """Wait for the case's slices to be embedded and the decoder compiled, as the page shows."""
    deadline = time.monotonic() + WAIT_S
    while not ((s := client.get(session).json())["embedded"] == s["slices"] and s["warmed"]):
        assert s["error"] is None and time.monotonic() < deadline, s
        time.sleep(0.1)


# --- the API ---------------------------------------------------------------------------------------------------------


def test_only_the_data_directory_cases_and_the_page_are_served(client, server, viewer):
    assert [c["case"] for c in client.get("/api/cases").json()["cases"]] == [GOOD, NO_SEG, BROKEN]
    secret = viewer.data.parent / "secret.txt"
    for case in ("../secret.txt", "../../etc/passwd", str(secret), str(viewer.data / GOOD), f"{GOOD}/../{GOOD}"):
        answer = client.post("/api/sessions", json={"case": case})
        assert answer.status_code == 404 and "no case" in answer.json()["error"], case
    # Raw paths, as a hostile client sends them (an HTTP library would normalise the dots away first).
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    for path in (
        "/static/../../secret.txt",
        "/static/%2e%2e/%2e%2e/secret.txt",
        "/static/..%2f..%2fsecret.txt",
        "/static//etc/passwd",
        "/../secret.txt",
        "/static/../app.py",
    ):
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request("GET", path, headers={"Cookie": f"{cookie_name(TOKEN)}={TOKEN}"})
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert response.status == 404 and b"outside the data" not in body and b"import" not in body, path
    assert client.get("/static/viewer.js").status_code == 200


def test_malformed_requests_get_a_clear_4xx(client):
    session = _session(client)

    def refused(answer, status, words):
        assert answer.status_code == status, answer.text
        assert words in answer.json()["error"], answer.json()

    refused(client.post("/api/sessions", content=b"{case"), 400, "not JSON")
    refused(client.post("/api/sessions", json=["case"]), 400, "JSON object")
    refused(client.post("/api/sessions", json={}), 400, "missing field 'case'")
    refused(client.post("/api/sessions", json={"case": 5}), 400, "case: expected str")
    refused(client.post(f"{session}/click", json={"x": "1", "y": 2, "z": 3}), 400, "x: expected an integer")
    refused(client.post(f"{session}/click", json={"x": 1, "y": 2}), 400, "missing field 'z'")
    refused(client.post(f"{session}/click", json={"x": 1, "y": 2, "z": 3, "positive": "yes"}), 400, "true or false")
    refused(client.post(f"{session}/click", json={"x": 1000, "y": 2, "z": 3}), 422, "outside")
    refused(client.post(f"{session}/propagate", json={"z": 3}), 422, "click the tumour first")
    refused(client.get(f"{session}/image?axis=axial"), 400, "missing query parameter 'index'")
    refused(client.get(f"{session}/image?axis=axial&index=two"), 400, "index='two'")
    refused(client.get(f"{session}/image?axis=oblique&index=2"), 400, "axis 'oblique'")
    refused(client.get(f"{session}/image?axis=axial&index=99"), 400, "outside")
    refused(client.get(f"{session}/image?modality=ct&axis=axial&index=2"), 400, "modality 'ct'")
    refused(client.get(f"{session}/download"), 404, "save first")
    refused(client.get("/api/sessions/nope"), 404, "no such session")
    assert (
        client.post(
            f"{session}/click", content=b"{" + b" " * 100_000 + b"}", headers={"Content-Type": "application/json"}
        ).status_code
        == 413
    )
    for deep in (b"[" * 8000 + b"]" * 8000, b'{"x":' * 2500 + b"1" + b"}" * 2500):  # both fit MAX_BODY
        refused(client.post(f"{session}/click", content=deep), 400, "nested too deeply")
        refused(client.post("/api/sessions", content=deep), 400, "nested too deeply")
    assert client.get("/api/sessions").status_code == 405
    assert client.get(f"{session}/image?axis=axial&index=2").status_code == 200  # the session survived it all


def test_a_broken_case_is_an_error_and_the_server_goes_on(client):
    answer = client.post("/api/sessions", json={"case": BROKEN})
    assert answer.status_code == 422 and BROKEN in answer.json()["error"] and "unreadable" in answer.json()["error"]
    assert client.get("/api/cases").status_code == 200
    _session(client)


@pytest.mark.slow
def test_a_case_without_segmentation_is_segmented_without_a_dice(client, viewer):
    answer = client.post("/api/sessions", json={"case": NO_SEG})
    assert answer.status_code == 201 and answer.json()["has_seg"] is False
    session = f"/api/sessions/{answer.json()['session']}"
    _ready(client, session)  # a click before would compile the encoder for one slice: seconds of CI for nothing
    x, y, z = _target(_tumour(viewer.data)[0])
    clicked = client.post(f"{session}/click", json={"x": x, "y": y, "z": z}).json()
    assert clicked["dice"] is None and clicked["voxels"] > 0
    labels = np.frombuffer(client.get(f"{session}/labels?axis=axial&index={z}").content, np.uint8)
    assert labels.any() and not (labels & 2).any()


def test_clicks_then_propagation_give_eval_predicts_mask_and_tabs_are_independent(client, viewer):
    tumour, _ = _tumour(viewer.data)
    x, y, z = _target(tumour)
    first, second = _session(client), _session(client)
    _ready(client, first)
    clicked = client.post(f"{first}/click", json={"x": x, "y": y, "z": z}).json()
    assert clicked["clicks"] == [dict(x=x, y=y, z=z, positive=True, by_user=True)]
    client.post(f"{first}/propagate", json={"z": z})
    volume = prepare_volume(load_case(find_cases(viewer.data / GOOD)[0]), viewer.spec)
    expected, _ = predict_volume(viewer.segmenter, volume, np.array([[x, y, z]]))
    mask = viewer.app.state.viewer.sessions[first.rsplit("/", 1)[1]].editor.native_mask()
    assert mask.any() and np.array_equal(mask, expected)
    summary = client.get(first).json()
    assert summary["voxels"] == int(expected.sum()) and summary["dice"] == pytest.approx(_dice(expected, tumour))
    assert client.get(second).json()["voxels"] == 0  # another tab on the same case has its own mask
    assert client.post(f"{first}/clear", json={"z": z}).json()["voxels"] == int(expected.sum() - expected[..., z].sum())
    assert client.post(f"{first}/undo").json()["voxels"] == int(expected.sum())
    assert client.post(f"{first}/clear").json()["voxels"] == 0


def test_every_request_without_the_token_is_refused_and_the_printed_url_works(client, viewer, server):
    session = _session(client)
    stranger = TestClient(viewer.app)  # never opened the printed URL; no lifespan: the module's store stays open
    impostors = [
        ({}, ""),
        ({}, "?token=" + "A" * len(TOKEN)),
        ({}, "?token=" + TOKEN[:-1]),
        ({cookie_name(TOKEN): TOKEN[:-1]}, ""),
        ({cookie_name("another viewer's token"): TOKEN}, ""),
    ]
    routes = [("/static/viewer.js", {"GET"})] + [
        (r.path.replace("{session}", session.rsplit("/", 1)[1]), r.methods)
        for r in viewer.app.routes
        if getattr(r, "methods", None)
    ]
    assert len(routes) > 12 and "/api/sessions/{session}/box" in [r.path for r in viewer.app.routes]
    for path, methods in routes:
        for method in methods - {"HEAD"}:
            for cookies, query in impostors:
                stranger.cookies.clear()
                stranger.cookies.update(cookies)
                answer = stranger.request(method, path + query, json={"case": GOOD})
                assert answer.status_code == 403 and "token" in answer.json()["error"], (method, path, query, cookies)
    assert client.get(session).status_code == 200  # with the cookie: served

    # The printed URL, in a fresh cookie jar as a browser has: the page, then its requests without the token.
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    with opener.open(server, timeout=30) as page:
        assert page.status == 200 and b"<html" in page.read().lower()
    with opener.open(urllib.parse.urljoin(server, "/api/cases"), timeout=30) as listing:
        assert [c["case"] for c in json.loads(listing.read())["cases"]] == [GOOD, NO_SEG, BROKEN]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.parse.urljoin(server, "/api/cases"), timeout=30)
    assert refused.value.code == 403


def test_a_box_then_propagation_give_eval_predicts_mask(client, viewer):
    tumour, _ = _tumour(viewer.data)
    z = int(np.argmax(tumour.sum(axis=(0, 1))))
    box = _tight_box(tumour, z)
    session = _session(client)
    _ready(client, session)
    boxed = client.post(f"{session}/box", json=box)
    assert boxed.status_code == 200, boxed.text
    assert boxed.json()["boxes"] == [dict(**box, by_user=True)] and boxed.json()["clicks"] == []
    corners = np.array([[box["x0"], box["y0"], box["x1"], box["y1"], z]])
    volume = prepare_volume(load_case(find_cases(viewer.data / GOOD)[0]), viewer.spec)
    expected, _ = predict_volume(viewer.segmenter, volume, boxes=corners)  # eval.predict --boxes
    labels = client.get(f"{session}/labels?axis=axial&index={z}")
    shown = (np.frombuffer(labels.content, np.uint8) & 1).reshape(int(labels.headers["X-Rows"]), -1)
    assert shown.any() and np.array_equal(shown[::-1].T > 0, expected[:, :, z])  # planes.plane's orientation
    propagated = client.post(f"{session}/propagate", json={"z": z}).json()
    mask = viewer.app.state.viewer.sessions[session.rsplit("/", 1)[1]].editor.native_mask()
    assert np.array_equal(mask, expected) and propagated["voxels"] == int(expected.sum())
    assert propagated["dice"] == pytest.approx(_dice(expected, tumour))
    assert {b["by_user"] for b in propagated["boxes"]} == {True, False}
    swapped = dict(box, x0=box["x1"], x1=box["x0"])  # opposite corners in any order
    users = [b for b in client.post(f"{session}/box", json=swapped).json()["boxes"] if b["by_user"]]
    assert users == [dict(**box, by_user=True)]
    refined = client.post(f"{session}/click", json={"x": box["x0"], "y": box["y0"], "z": z, "positive": False})
    assert len(refined.json()["clicks"]) == 1 and [b for b in refined.json()["boxes"] if b["by_user"]] == users

    missing = client.post(f"{session}/box", json={"x0": 1, "y0": 2, "x1": 3, "z": z})
    assert missing.status_code == 400 and "missing field 'y1'" in missing.json()["error"]
    outside = client.post(f"{session}/box", json=dict(box, x1=10_000))
    assert outside.status_code == 422 and "outside" in outside.json()["error"]


def test_memory_holds_cases_in_memory_however_many_tabs(viewer, monkeypatch):
    """Two cases, room for one, four tabs: one case's arrays alive at any time; a tab whose case was dropped reads it
    again and goes on with its own edits."""
    alive = []  # weak references to every case's images, model volume and embeddings the store makes

    def recorded(make):
        def making(*args, **kwargs):
            made = make(*args, **kwargs)
            alive.append(weakref.ref(made))
            return made

        return making

    for name in ("load_case", "prepare_volume", "SliceEmbeddings"):
        monkeypatch.setattr(f"sam_jax.viewer.cases.{name}", recorded(getattr(cases_module, name)))

    def held() -> int:
        """Objects alive, once the dropped case's background work has stopped (it stops between batches)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            gc.collect()
            count = sum(ref() is not None for ref in alive)
            if count <= 3 or time.monotonic() > deadline:
                return count
            time.sleep(0.1)

    store = CaseStore(viewer.data, viewer.segmenter, viewer.spec, keep=1, warm_clicks=0)
    client = _signed_in(TestClient(build_app(store, viewer.segmenter, viewer.output, token=TOKEN)))
    x, y, z = _target(_tumour(viewer.data)[0])
    first = _session(client, GOOD)
    clicked = client.post(f"{first}/click", json={"x": x, "y": y, "z": z}).json()
    tabs = [_session(client, case) for case in (NO_SEG, GOOD, NO_SEG)]
    assert len(alive) == 3 * 4 and held() == 3  # four opens, two cases read twice each: one in memory
    dropped = client.get(first).json()
    assert dropped["voxels"] == clicked["voxels"] and "read again" in dropped["error"]
    again = client.post(f"{first}/click", json={"x": x, "y": y, "z": z}).json()  # GOOD read again
    assert again["clicks"] == 2 * clicked["clicks"] and again["voxels"] > 0  # the tab's own click kept
    assert held() == 3 and len(alive) == 3 * 5
    assert client.get(f"{tabs[0]}/image?axis=axial&index=0").status_code == 200  # NO_SEG read again
    assert held() == 3 and len(alive) == 3 * 6
    store.close()


def test_save_never_makes_a_folder_but_the_output_folder(viewer, tmp_path):
    """Without --output_dir the mask goes next to the case: a case folder deleted since is not made again. With one,
    that folder alone is made again, never its parents."""
    data = tmp_path / "data"
    output = tmp_path / "out" / "masks"
    for folder, deleted in ((None, data / GOOD), (output, output), (output, output.parent)):
        shutil.copytree(viewer.data / GOOD, data / GOOD, dirs_exist_ok=True)
        store = CaseStore(data, viewer.segmenter, viewer.spec, keep=1, warm_clicks=0)
        output.mkdir(parents=True, exist_ok=True)
        client = _signed_in(TestClient(build_app(store, viewer.segmenter, folder, token=TOKEN)))
        session = _session(client)
        shutil.rmtree(deleted)
        answer = client.post(f"{session}/save")
        if deleted == output:  # the output folder itself
            assert answer.status_code == 200 and (output / f"{GOOD}-viewer_mask.nii.gz").is_file(), answer.text
        else:
            assert answer.status_code == 404 and str(deleted) in answer.json()["error"], answer.text
            assert "gone" in answer.json()["error"] and not deleted.exists()
        store.close()


# --- the page in Chromium --------------------------------------------------------------------------------------------


def _wait(driver, script: str, what: str):
    WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(
        lambda d: d.execute_script(f"return document.body.dataset.busy === '0' && ({script})"), what
    )


def _shown_mask(driver) -> np.ndarray:
    """The mask layer's drawn pixels of the shown axial slice, back in (x, y) voxel order."""
    rows, cols, alpha = driver.execute_script(
        "const c = document.getElementById('mask');"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "return [c.height, c.width, Array.from(d.filter((_, i) => i % 4 === 3))];"
    )
    return (np.asarray(alpha).reshape(rows, cols) > 0)[::-1].T


def _open_good_case(driver) -> None:
    driver.find_element(By.CSS_SELECTOR, f"button[data-case='{GOOD}']").click()
    _wait(
        driver,
        "viewer.summary && viewer.summary.embedded === viewer.summary.slices && viewer.summary.warmed",
        "every slice embedded",
    )


def _show_slice(driver, z: int) -> None:
    """Move the slider, as a user does with the arrow keys, to axial slice z."""
    start = driver.execute_script("return viewer.index.axial")
    driver.find_element(By.ID, "slice").send_keys(
        *[Keys.ARROW_RIGHT if z > start else Keys.ARROW_LEFT] * abs(z - start)
    )
    _wait(driver, f"viewer.index.axial === {z}", "the tumour's slice")


def _at_voxel(driver, actions: ActionChains, x: int, y: int) -> ActionChains:
    """`actions` moved to the centre of voxel (x, y) of the shown axial slice on the page's image."""
    zoom, rows, cols = driver.execute_script("return [viewer.zoom, viewer.rows, viewer.cols]")
    col, row = x, rows - 1 - y  # the axial display orientation documented in sam_jax/viewer/planes.py
    dx, dy = (col + 0.5) * zoom - cols * zoom / 2, (row + 0.5) * zoom - rows * zoom / 2
    return actions.move_to_element_with_offset(driver.find_element(By.ID, "marks"), round(dx), round(dy))


def _click_voxel(driver, x: int, y: int, negative: bool = False):
    """Click the page's image where voxel (x, y) of the shown axial slice is drawn."""
    actions = _at_voxel(driver, ActionChains(driver), x, y)
    if negative:
        actions = actions.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT)
    else:
        actions = actions.click()
    driver.execute_script("viewer.lastLatency = null")
    actions.perform()
    _wait(driver, "viewer.lastLatency !== null", "the click's mask")
    return driver.execute_script("return viewer.lastLatency")


@pytest.mark.slow
def test_click_propagate_edit_and_save_in_the_browser(server, browser, viewer):
    tumour, affine = _tumour(viewer.data)
    x, y, z = _target(tumour)
    browser.get(server)
    _wait(browser, "document.querySelectorAll('#cases button').length === 3", "the case list")

    browser.find_element(By.CSS_SELECTOR, f"button[data-case='{BROKEN}']").click()
    _wait(browser, "!document.getElementById('error').hidden", "the broken case's error")
    assert BROKEN in browser.find_element(By.ID, "error").text

    _open_good_case(browser)
    assert browser.find_element(By.ID, "error").is_displayed() is False
    assert "ready" in browser.find_element(By.ID, "progress").text
    _show_slice(browser, z)

    latency = _click_voxel(browser, x, y)
    summary = browser.execute_script("return viewer.summary")
    assert summary["clicks"] == [dict(x=x, y=y, z=z, positive=True, by_user=True)]
    shown = _shown_mask(browser)
    assert shown.any()
    clicked = np.zeros_like(tumour)
    clicked[:, :, z] = shown
    assert summary["dice"] == pytest.approx(_dice(clicked, tumour))
    assert browser.find_element(By.ID, "dice").text == f"Dice {100 * summary['dice']:.1f}"
    print(f"\nclick → mask drawn: {latency['page']:.0f} ms in the page, {latency['server']:.0f} ms in the server")

    browser.find_element(By.ID, "propagate").click()
    _wait(browser, "viewer.lastLatency && viewer.lastLatency.path === 'propagate'", "the propagated mask")
    propagated = browser.execute_script("return viewer.summary")
    assert propagated["voxels"] > shown.sum()

    _click_voxel(browser, 0, 0, negative=True)  # background, shift-clicked: added to the slice's prompt
    edited = browser.execute_script("return viewer.summary")
    assert edited["clicks"][-1] == dict(x=0, y=0, z=z, positive=False, by_user=True)
    browser.find_element(By.ID, "undo").click()
    _wait(browser, "viewer.lastLatency && viewer.lastLatency.path === 'undo'", "the undone click")
    assert browser.execute_script("return viewer.summary")["voxels"] == propagated["voxels"]

    browser.find_element(By.ID, "save").click()
    _wait(browser, "!document.getElementById('download').hidden", "the download link")
    saved_path = viewer.output / f"{GOOD}-viewer_mask.nii.gz"
    saved = nib.load(saved_path)
    mask = np.asarray(saved.dataobj) > 0
    assert saved.shape == tumour.shape and np.array_equal(saved.affine, affine)
    assert np.array_equal(mask[:, :, z], shown) and mask.sum() == propagated["voxels"]
    assert propagated["dice"] == pytest.approx(_dice(mask, tumour))
    volume = prepare_volume(load_case(find_cases(viewer.data / GOOD)[0]), viewer.spec)
    assert np.array_equal(mask, predict_volume(viewer.segmenter, volume, np.array([[x, y, z]]))[0])
    downloaded = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch(document.getElementById('download').href).then(r => r.arrayBuffer()).then(b => done(b.byteLength));"
    )
    assert downloaded == saved_path.stat().st_size

    browser.switch_to.new_window("tab")  # a second tab on the same case: its own, empty mask
    browser.get(server)
    _wait(browser, "document.querySelectorAll('#cases button').length === 3", "the case list in a second tab")
    browser.find_element(By.CSS_SELECTOR, f"button[data-case='{GOOD}']").click()
    _wait(browser, "viewer.summary !== null", "the case in a second tab")
    assert browser.execute_script("return viewer.summary")["voxels"] == 0


@pytest.mark.slow
def test_drag_a_box_then_propagate_in_the_browser(server, browser, viewer):
    tumour, _ = _tumour(viewer.data)
    z = int(np.argmax(tumour.sum(axis=(0, 1))))
    box = _tight_box(tumour, z)
    browser.switch_to.new_window("tab")
    browser.get(server)
    _wait(browser, "document.querySelectorAll('#cases button').length === 3", "the case list")
    _open_good_case(browser)
    _show_slice(browser, z)
    browser.execute_script("viewer.lastLatency = null")
    drag = _at_voxel(browser, ActionChains(browser), box["x1"], box["y0"]).click_and_hold()  # any two corners
    drag = _at_voxel(browser, drag, (box["x0"] + box["x1"]) // 2, box["y1"])
    _at_voxel(browser, drag, box["x0"], box["y1"]).release().perform()
    _wait(browser, "viewer.lastLatency !== null && viewer.lastLatency.path === 'box'", "the box's mask")
    summary = browser.execute_script("return viewer.summary")
    assert summary["boxes"] == [dict(**box, by_user=True)] and summary["clicks"] == []
    volume = prepare_volume(load_case(find_cases(viewer.data / GOOD)[0]), viewer.spec)
    corners = np.array([[box["x0"], box["y0"], box["x1"], box["y1"], z]])
    expected, _ = predict_volume(viewer.segmenter, volume, boxes=corners)  # eval.predict --boxes
    assert np.array_equal(_shown_mask(browser), expected[:, :, z])
    corner = browser.execute_script(  # the box drawn: its top-left corner pixel (x0, y1) on the marks layer
        f"return Array.from(document.getElementById('marks').getContext('2d')"
        f".getImageData({box['x0']}, viewer.rows - 1 - {box['y1']}, 1, 1).data)"
    )
    assert corner[3] == 255 and corner[:3] != [0, 0, 0]

    browser.find_element(By.ID, "propagate").click()
    _wait(browser, "viewer.lastLatency && viewer.lastLatency.path === 'propagate'", "the propagated mask")
    propagated = browser.execute_script("return viewer.summary")
    assert propagated["voxels"] == int(expected.sum()) and propagated["dice"] == pytest.approx(_dice(expected, tumour))
    assert set(np.flatnonzero(expected.any(axis=(0, 1)))) <= {b["z"] for b in propagated["boxes"]}  # walked by boxes


def test_the_port_is_checked_before_the_model_loads_and_another_host_warns(tmp_path):
    """As a user types them, with a checkpoint that is not there: a port fault must be told before the checkpoint's."""
    missing = ["--checkpoint", tmp_path / "no_run", "--data_dir", tmp_path]
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    busy = held.getsockname()[1]
    runs = {
        "busy": start_app("-m", "eval.viewer", *missing, f"--port={busy}", stderr=-1, stdout=-1, text=True),
        "range": start_app("-m", "eval.viewer", *missing, "--port=70000", stderr=-1, stdout=-1, text=True),
        "host": start_app("-m", "eval.viewer", *missing, "--host=0.0.0.0", "--port=0", stderr=-1, stdout=-1, text=True),
    }
    told = {name: run.communicate(timeout=WAIT_S)[1] for name, run in runs.items()}
    held.close()
    assert all(run.returncode == 1 for run in runs.values()), told
    assert f"cannot listen on 127.0.0.1:{busy}: Address already in use" in told["busy"], told["busy"]
    assert "--port=70000" in told["range"] and "range [0, 65535]" in told["range"], told["range"]
    for name in ("busy", "range"):
        assert "no_run" not in told[name], told[name]  # refused before the checkpoint was looked at
    warning, _, rest = told["host"].partition("the scans leave this machine")
    assert "warning: --host 0.0.0.0" in warning and "no_run" in rest, told["host"]  # warned, then the checkpoint
