"""zeroseg serve: the app's handlers (fake predictor, no browser), the HTTP layer, and a real-browser test."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

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
    assert out["size"] == [6, 4] and dict(out["shares"]) == {"sky": 50.0, "grass": 50.0, "road": 0.0}
    label = np.asarray(Image.open(io.BytesIO(base64.b64decode(out["label"].split(",", 1)[1]))))
    assert label.tolist() == [[0, 0, 0, 1, 1, 1]] * 4
    overlay = Image.open(io.BytesIO(base64.b64decode(out["overlay"].split(",", 1)[1])))
    assert overlay.width == 6 and overlay.height > 4  # the image, then the legend strip below it
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
