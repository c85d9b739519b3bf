"""zeroseg serve: the app's handlers (fake predictor, no browser), the HTTP layer, and a real-browser test."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zeroseg.errors import ZeroSegError
from zeroseg.serve import SegmentApp, decode_image, make_server, parse_classes, pixel_shares


class HalfPredictor:
    """Labels the left half of an image 0 and the right half 1 (with two classes); records overlapping calls."""

    def __init__(self, delay: float = 0.0) -> None:
        self.class_names = ["a", "b"]
        self.delay, self.active, self.max_active = delay, 0, 0

    def set_classes(self, names):
        self.class_names = list(names)

    def predict(self, images):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay)
        b, _, h, w = images.shape
        labels = torch.zeros(b, h, w, dtype=torch.long)
        labels[:, :, w // 2 :] = min(1, len(self.class_names) - 1)
        self.active -= 1
        return labels, torch.ones(b, h, w)


def _png_bytes(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_parse_classes_and_bad_lists():
    assert parse_classes(" red dotted, green ,,blue ") == ["red dotted", "green", "blue"]
    for bad in ("", " , ,", "a, a"):
        with pytest.raises(ZeroSegError):
            parse_classes(bad)


def test_decode_image_refuses_non_images_and_huge_ones():
    assert decode_image(_png_bytes(5, 3)).shape == (3, 5, 3)
    with pytest.raises(ZeroSegError, match="not an image"):
        decode_image(b"GIF? no, just text")
    with pytest.raises(ZeroSegError, match="limit is 100"):
        decode_image(_png_bytes(11, 10), max_pixels=100)
    assert decode_image(_png_bytes(10, 10), max_pixels=100).shape == (10, 10, 3)


def test_pixel_shares_by_hand():
    label = np.array([[0, 0, 2], [2, 2, 2]])  # class 0: 2/6, class 1: 0/6, class 2: 4/6
    shares = pixel_shares(label, ["x", "y", "z"])
    assert [n for n, _ in shares] == ["z", "x", "y"]
    assert shares[0][1] == pytest.approx(400 / 6) and shares[1][1] == pytest.approx(200 / 6) and shares[2][1] == 0


def test_app_answer_overlay_label_png_and_shares():
    app = SegmentApp(HalfPredictor(), {"ex": np.zeros((4, 6, 3), dtype=np.uint8)})
    out = app.answer({"example": "ex", "classes": "sky, grass, road"})
    assert out["size"] == [6, 4] and {n: v for n, v, _ in out["shares"]} == {"sky": 50.0, "grass": 50.0, "road": 0.0}
    # Colours are the overlay's: the VOC palette, index 0 black, 1 (128, 0, 0), 2 (0, 128, 0).
    assert {n: c for n, _, c in out["shares"]} == {"sky": "#000000", "grass": "#800000", "road": "#008000"}
    label = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["label"].split(",", 1)[1]))))
    assert label.tolist() == [[0, 0, 0, 1, 1, 1]] * 4
    overlay = Image.open(io.BytesIO(base64.b64decode(out["overlay"].split(",", 1)[1])))
    assert overlay.size == (6, 4)
    assert app.predictor.class_names == ["sky", "grass", "road"]
    upload = "data:image/png;base64," + base64.b64encode(_png_bytes(8, 2)).decode()
    assert app.answer({"image": upload, "example": "ex", "classes": "a, b"})["size"] == [8, 2]  # upload wins


def test_app_answer_turns_bad_input_into_messages():
    app = SegmentApp(HalfPredictor(), {"ex": np.zeros((4, 4, 3), dtype=np.uint8)}, max_pixels=64)
    assert "empty class list" in app.answer({"example": "ex", "classes": " , "})["error"]
    assert "no image" in app.answer({"classes": "a"})["error"]
    assert "unknown example" in app.answer({"example": "nope", "classes": "a"})["error"]
    assert "base64" in app.answer({"image": "data:image/png;base64,@@@", "classes": "a"})["error"]
    not_image = "data:," + base64.b64encode(b"hello").decode()
    assert "not an image" in app.answer({"image": not_image, "classes": "a"})["error"]
    huge = "data:," + base64.b64encode(_png_bytes(9, 8)).decode()
    assert "limit is 64" in app.answer({"image": huge, "classes": "a"})["error"]


def test_one_prediction_at_a_time():
    pred = HalfPredictor(delay=0.05)
    app = SegmentApp(pred, {"ex": np.zeros((2, 2, 3), dtype=np.uint8)})
    threads = [threading.Thread(target=app.answer, args=({"example": "ex", "classes": "a, b"},)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert pred.max_active == 1


def _serve(app, **kw):
    server = make_server(app, port=0, **kw)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def test_http_page_is_offline_and_caps_uploads():
    app = SegmentApp(HalfPredictor(), {"ex": np.zeros((2, 2, 3), dtype=np.uint8)})
    server, url = _serve(app, max_upload_bytes=1000)
    try:
        assert server.server_address[0] == "127.0.0.1"
        page = urllib.request.urlopen(url + "/").read().decode()
        assert 'value="ex"' in page and "http://" not in page and "https://" not in page and "src=" not in page
        big = json.dumps({"image": "A" * 8000, "classes": "a"}).encode()
        req = urllib.request.Request(url + "/predict", data=big, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 413 and "too large" in json.loads(err.value.read())["error"]
        ok = urllib.request.Request(url + "/predict", data=json.dumps({"example": "ex", "classes": "a,b"}).encode())
        assert json.loads(urllib.request.urlopen(ok).read())["size"] == [2, 2]
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------ real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class CDP:
    """A minimal Chrome DevTools Protocol client over one page's websocket (events are kept in order)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.next_id, self.events = 0, []

    def send(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 60.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression}")


def _browser(tmp_path):
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "--no-first-run", "--window-size=1100,1000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    port_file = profile / "DevToolsActivePort"
    end = time.monotonic() + 30
    while not port_file.is_file() or not port_file.read_text().strip():
        if time.monotonic() > end or proc.poll() is not None:
            proc.kill()
            pytest.skip("chromium did not start")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    pages = [t for t in json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list").read())
             if t["type"] == "page"]  # fmt: skip
    return proc, pages[0]["webSocketDebuggerUrl"]


def _submit(cdp: CDP, classes: str) -> dict:
    cdp.js(f"document.getElementById('classes').value = {json.dumps(classes)}; "
           "document.getElementById('status').textContent = 'x'; "
           "document.getElementById('run').click(); true")  # fmt: skip
    cdp.wait("(s => s.startsWith('done') || document.getElementById('error').textContent)"
             "(document.getElementById('status').textContent)")  # fmt: skip
    return cdp.js(
        "(() => { const o = document.getElementById('overlay'); return {src: o.src, w: o.naturalWidth, "
        "h: o.naturalHeight, error: document.getElementById('error').textContent, "
        "shares: document.getElementById('shares').rows.length, label: document.getElementById('download').href}})()"
    )


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_page_in_headless_chromium(tmp_path, tiny_config):
    pytest.importorskip("websockets")
    import os

    from websockets.sync.client import connect

    from zeroseg.cli import main
    from zeroseg.serve import build_app

    assert main(["train", str(tiny_config()), "--quiet"]) == 0
    app = build_app(tmp_path / "runs" / "tiny")  # the run directory: its final stage is served
    assert any(k.startswith("validation") for k in app.examples)
    server, url = _serve(app)
    stack = contextlib.ExitStack()
    proc, ws_url = _browser(tmp_path)
    try:
        cdp = CDP(stack.enter_context(connect(ws_url, max_size=64 * 2**20)))
        cdp.send("Network.enable")
        cdp.send("Page.enable")
        cdp.send("Page.navigate", url=url + "/")
        cdp.wait("document.readyState === 'complete' && !!document.getElementById('run')")
        first = sorted(app.examples)[0]
        cdp.js(f"document.getElementById('example').value = {json.dumps(first)}; true")
        h, w = app.examples[first].shape[:2]
        a = _submit(cdp, ", ".join(app.predictor.class_names))
        assert not a["error"] and a["w"] == w and a["h"] == h and a["label"].startswith("data:image/png")
        assert a["shares"] == len(app.predictor.class_names)
        shot = os.environ.get("ZEROSEG_SCREENSHOT")
        if shot:
            data = cdp.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
            Path(shot).write_bytes(base64.b64decode(data))
        b = _submit(cdp, "red dotted, green checkered")
        assert not b["error"] and b["w"] == w and b["src"] != a["src"] and b["shares"] == 2
        # An upload through the file input, then bad input shown in the page.
        image = tmp_path / "upload.png"
        Image.fromarray((np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)).save(image)
        node = cdp.send("DOM.querySelector", nodeId=cdp.send("DOM.getDocument")["root"]["nodeId"], selector="#file")
        cdp.send("DOM.setFileInputFiles", files=[str(image)], nodeId=node["nodeId"])
        c = _submit(cdp, "sky, grass")
        assert not c["error"] and c["w"] == 30
        assert "empty class list" in _submit(cdp, " , ")["error"]
        not_image = tmp_path / "not_image.png"
        not_image.write_text("plain text")
        cdp.send("DOM.setFileInputFiles", files=[str(not_image)], nodeId=node["nodeId"])
        assert "not an image" in _submit(cdp, "sky")["error"]
        sent = [e for e in cdp.events if e.get("method") == "Network.requestWillBeSent"]
        requested = [e["params"]["request"]["url"] for e in sent]
        assert requested and all(u.startswith((url, "data:")) for u in requested), requested
    finally:
        stack.close()
        proc.kill()
        proc.wait()
        server.shutdown()
        server.server_close()
