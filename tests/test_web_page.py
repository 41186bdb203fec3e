"""The web page of `saliency serve` (service/saliency/http/static/), driven in a real browser.

Debian's chromium (installed by `make tools`) runs headless under Playwright for Python; the
page talks to a real `saliency serve` process over loopback through its HTTP port. The browser
tests skip, saying why, only when /usr/bin/chromium is absent; the checks of the page's
committed files run everywhere.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from service_harness import ServerProcess, free_port

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "service" / "saliency" / "http" / "static"
CHROMIUM = Path("/usr/bin/chromium")
OUT = ROOT / "out" / "web-page"
MODEL = "efficientnet_lite0"
TOKEN = "web-page-test-token"
CROP_MODEL, CROP_SIZE = "user_crop", 64
# Where a CROP_SIZE input lies in the 451x300 cat (tests/test_map_size.py works it out): the
# photograph scaled to 109x73, its centre 64x64 from column 22, row 4.
CROP_COLUMNS, CROP_ROWS = (22 * 451 / 109, 86 * 451 / 109), (4 * 300 / 73, 68 * 300 / 73)


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------ committed files


def test_wire_table_is_generated_from_the_proto():
    """wire.json (ListModels names -> protobuf JSON names) is what the generator writes now."""
    assert (STATIC / "wire.json").read_text() == _script("gen_web_wire").render(), (
        "service/saliency/http/static/wire.json is stale: run python scripts/gen_web_wire.py"
    )


def test_wire_table_maps_every_choice_to_an_enum_value_the_service_accepts():
    """Each choice ListModels advertises, sent as the page sends it, is read back as that choice."""
    from google.protobuf import json_format

    from saliency.attribution.limits import Limits
    from saliency.codec.method_params import method_enum, methods_from_proto
    from saliency.v1 import explainer_pb2 as pb

    wire = json.loads((STATIC / "wire.json").read_text())["methods"]
    checked = 0
    for name, entry in wire.items():
        for field, choices in entry["enums"].items():
            for choice, value_name in choices.items():
                if choice == "custom":  # needs a tensor, which the page does not send
                    continue
                body = {"method": pb.Method.Name(method_enum(name)), entry["oneof"]: {entry["fields"][field]: value_name}}
                request = json_format.ParseDict(body, pb.MethodRequest())
                params = methods_from_proto([request], Limits(), 1, (3, 224, 224))[name]
                assert getattr(params, field) == choice, (name, field, choice)
                checked += 1
    assert checked > 30


def test_bundled_photographs_are_small_jpegs_of_the_skimage_photographs():
    names = ("chelsea", "coffee", "rocket", "astronaut")
    assert sorted(p.stem for p in (STATIC / "samples").iterdir()) == sorted(names)
    for name in names:
        path = STATIC / "samples" / f"{name}.jpg"
        assert path.stat().st_size < 100 * 1024
        with Image.open(path) as image:
            assert image.format == "JPEG"
            shown = np.asarray(image.convert("RGB"), dtype=np.float32)
        original = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        assert max(shown.shape[:2]) <= 512
        expected = np.asarray(original.resize(shown.shape[1::-1], Image.Resampling.LANCZOS), dtype=np.float32)
        assert np.abs(shown - expected).mean() < 4.0, name


def test_page_uses_nothing_from_outside_the_service():
    for path in STATIC.glob("*.*"):
        if path.suffix in (".html", ".js", ".css"):
            text = path.read_text()
            assert "http://" not in text and "https://" not in text, path.name
            assert "@import" not in text and "fonts.googleapis" not in text, path.name


# ------------------------------------------------------------------------ in the browser

needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian's chromium; `make tools` installs it)"
)


class _Server:
    """`saliency serve` with bearer tokens on and its HTTP port on loopback, up when the page
    is served. Fixed chunk sizes: nothing is measured at start."""

    def __init__(self, tokens: Path, crop_config: Path):
        self.http_port = free_port()
        self.process = ServerProcess(
            "--models", MODEL, "--model-config", str(crop_config),
            "--http-port", str(self.http_port), "--http-host", "127.0.0.1",
            "--auth-tokens-file", str(tokens), "--max-chunk", "8", "--max-chunk-forward", "16",
        )
        self.url = f"http://127.0.0.1:{self.http_port}/"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline:
                self.process.stop()
                raise AssertionError(f"the HTTP port never answered:\n{self.process.output()}")
            time.sleep(0.2)

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


def _crop_model_config(directory: Path) -> Path:
    """A small ResNet-style user model (seeded weights) that sees only the centre of an image
    (`resize: crop`, CROP_SIZE square)."""
    import torch
    import yaml

    import user_nets

    torch.manual_seed(0)
    net = user_nets.randomise_batchnorm(user_nets.ResNetStyle()).eval()
    torch.save(net.state_dict(), directory / "resnet.pth")
    path = directory / "crop.yaml"
    path.write_text(yaml.safe_dump({
        "name": CROP_MODEL,
        "model": {"model_file": str(Path(user_nets.__file__).resolve()), "class_name": "ResNetStyle"},
        "weights": "resnet.pth",
        "input": {"size": [CROP_SIZE, CROP_SIZE], "resize": "crop"},
    }))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (Debian's chromium; `make tools` installs it)")
    tokens = tmp_path_factory.mktemp("auth") / "tokens.txt"
    tokens.write_text(TOKEN + "\n")
    running = _Server(tokens, _crop_model_config(tmp_path_factory.mktemp("crop_model")))
    yield running
    running.process.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium (Debian's chromium; `make tools` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(path, format="PNG")
    return path


class _Page:
    """A browser tab on the page, the token typed in as a person would; JavaScript errors are
    collected and must stay empty."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)
        self.page.wait_for_selector("#error[data-status='401']")  # no token yet
        self.page.fill("#token", TOKEN)
        self.page.dispatch_event("#token", "change")
        self.page.wait_for_selector(f"#model option[value={MODEL}]", state="attached")

    def choose(self, image: Path, methods: tuple[str, ...], model: str = MODEL) -> None:
        page = self.page
        page.set_input_files("#file", str(image))
        page.wait_for_selector("#preview:not([hidden])")
        page.select_option("#model", model)
        for box in page.query_selector_all("input.method"):
            box.set_checked(box.get_attribute("value") in methods)

    def run(self, timeout_s: float = 240) -> str:
        self.page.click("#run")
        self.page.wait_for_selector(
            "#status[data-state=done], #status[data-state=error]", timeout=timeout_s * 1000
        )
        return self.page.get_attribute("#status", "data-state")

    def close(self) -> None:
        self.context.close()


# Reads a canvas back: its spread of grey levels and how far it is from the photograph drawn
# alone at the same size (the overlay must have changed it).
CANVAS_STATS = """(canvas) => {
  const w = canvas.width, h = canvas.height;
  const drawn = canvas.getContext('2d').getImageData(0, 0, w, h).data;
  const plain = document.createElement('canvas');
  plain.width = w; plain.height = h;
  const ctx = plain.getContext('2d');
  ctx.drawImage(document.getElementById('preview'), 0, 0, w, h);
  const photo = ctx.getImageData(0, 0, w, h).data;
  let sum = 0, sum2 = 0, diff = 0, opaque = 0;
  for (let i = 0; i < drawn.length; i += 4) {
    const grey = (drawn[i] + drawn[i + 1] + drawn[i + 2]) / 3;
    sum += grey; sum2 += grey * grey;
    diff += (Math.abs(drawn[i] - photo[i]) + Math.abs(drawn[i + 1] - photo[i + 1]) + Math.abs(drawn[i + 2] - photo[i + 2])) / 3;
    if (drawn[i + 3] === 255) opaque++;
  }
  const n = w * h;
  return {width: w, height: h, std: Math.sqrt(Math.max(0, sum2 / n - (sum / n) ** 2)), diff: diff / n, opaque: opaque / n};
}"""


@pytest.fixture
def tab(browser, server):
    """A fresh tab on the page, closed after the test."""
    tab = _Page(browser, server.url)
    yield tab
    tab.close()


@pytest.fixture(scope="module")
def explained(browser, server, cat_png):
    """The cat explained on the page with Grad-CAM and IG, quality scores asked, left open for
    the checks below."""
    tab = _Page(browser, server.url)
    tab.choose(cat_png, ("gradcam", "ig"))
    tab.page.check("#evaluate")
    outcome = tab.run()
    OUT.mkdir(parents=True, exist_ok=True)
    tab.page.screenshot(path=str(OUT / "chelsea-gradcam-ig.png"), full_page=True)
    assert outcome == "done", tab.page.inner_text("#error") + tab.page.inner_text("#status")
    yield tab
    tab.close()


# The canvas's pixels kept aside, then how far the canvas has moved from them (mean |RGB|).
SNAPSHOT = "(canvas) => { canvas.kept = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data; }"
MOVED = """(canvas) => {
  const now = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let diff = 0;
  for (let i = 0; i < now.length; i += 4)
    diff += (Math.abs(now[i] - canvas.kept[i]) + Math.abs(now[i + 1] - canvas.kept[i + 1]) + Math.abs(now[i + 2] - canvas.kept[i + 2])) / 3;
  return diff / (now.length / 4);
}"""


def _set_opacity(page, value: float) -> None:
    page.fill("#opacity", str(value))
    page.dispatch_event("#opacity", "input")


@needs_chromium
def test_the_cat_is_explained_with_gradcam_and_ig(explained):
    page = explained.page
    assert page.get_attribute("#predictions li:first-child", "data-class-index") == "285"
    assert "Egyptian cat" in page.inner_text("#predictions li:first-child")
    canvases = {}
    for method in ("gradcam", "ig"):
        card = page.locator(f"article.card[data-method={method}][data-target='285']")
        assert card.get_attribute("data-state") == "done"
        canvases[method] = card.locator("canvas").element_handle()
        stats = page.evaluate(CANVAS_STATS, canvases[method])
        assert (stats["width"], stats["height"]) == (451, 300), stats  # the photograph's own size
        assert stats["opaque"] == 1.0, stats
        assert stats["std"] > 10, stats  # a picture, not a flat fill
        page.evaluate(SNAPSHOT, canvases[method])
        assert "ms" in card.locator(".latency").inner_text()
    # Opacity 0 leaves the photograph alone: the map is what moved the pixels.
    _set_opacity(page, 0)
    for method, canvas in canvases.items():
        assert page.evaluate(MOVED, canvas) > 3, method
    assert page.evaluate(CANVAS_STATS, canvases["gradcam"])["diff"] < 1.0
    _set_opacity(page, 0.6)
    for method, canvas in canvases.items():
        assert page.evaluate(MOVED, canvas) < 0.5, method  # redrawn as it was
    # Streamed: the prediction came with Grad-CAM (one pass), IG in a later event.
    arrived = {m: int(page.get_attribute(f"article.card[data-method={m}]", "data-arrived-ms")) for m in canvases}
    assert int(page.get_attribute("#prediction-panel", "data-arrived-ms")) == arrived["gradcam"] < arrived["ig"]
    ig_info = page.locator("article.card[data-method=ig] .info").inner_text()
    assert "completeness error" in ig_info and "n steps" in ig_info
    assert page.is_hidden("#error")
    assert explained.errors == []


@needs_chromium
def test_colormap_choice_redraws_and_signed_maps_are_diverging(explained):
    page = explained.page
    canvas = page.locator("article.card[data-method=gradcam] canvas").element_handle()
    page.evaluate(SNAPSHOT, canvas)
    page.select_option("#colormap", "gray")
    assert page.evaluate(MOVED, canvas) > 3
    assert page.locator("article.card[data-method=gradcam] .legend").get_attribute("title") == "colormap gray"
    page.select_option("#colormap", "auto")
    assert page.evaluate(MOVED, canvas) < 0.5
    # Grad-CAM is non-negative (sequential map); IG's map is signed (diverging map).
    assert page.locator("article.card[data-method=gradcam] .legend").get_attribute("title") == "colormap inferno"
    assert page.locator("article.card[data-method=ig] .legend").get_attribute("title") == "colormap coolwarm"
    assert explained.errors == []


@needs_chromium
def test_quality_scores_are_shown_when_asked(explained):
    page = explained.page
    assert page.is_visible("#quality-panel")
    rows = page.locator("#quality table").first.locator("tbody tr")
    assert rows.count() == 2  # one per map: Grad-CAM and IG of class 285
    for i, method in enumerate(("Grad-CAM", "Integrated Gradients")):
        row = rows.nth(i)
        assert row.locator("td").first.inner_text() == method
        for metric in ("deletion_auc", "insertion_auc"):
            value = float(row.locator(f"td[data-metric={metric}]").inner_text())
            assert 0.0 <= value <= 1.0, (method, metric, value)
    completeness = float(rows.nth(1).locator("td[data-metric=completeness_error]").inner_text())
    assert completeness >= 0.0
    agreement = page.locator("#quality table").nth(1).locator("tbody tr")
    assert agreement.count() == 1 and "Integrated Gradients" in agreement.inner_text()


@needs_chromium
def test_npy_downloads_are_the_maps_the_api_returns(explained, server, cat_png, tmp_path):
    page = explained.page
    status, answer = server.post(f"v1/models/{MODEL}:explain", {
        "image": base64.b64encode(cat_png.read_bytes()).decode(),
        "targets": {"topK": 1},
        "methods": [{"method": "METHOD_GRADCAM"}, {"method": "METHOD_INTEGRATED_GRADIENTS"}],
        "output": {"mapDtype": "DTYPE_FLOAT32"},
    })
    assert status == 200, answer
    api = {}
    for a in answer["attributions"]:
        shape = tuple(int(s) for s in a["map"]["shape"])
        api[a["method"]] = np.frombuffer(base64.b64decode(a["map"]["data"]), dtype="<f4").reshape(shape)
    for method, key in (("gradcam", "METHOD_GRADCAM"), ("ig", "METHOD_INTEGRATED_GRADIENTS")):
        with page.expect_download() as info:
            page.click(f"article.card[data-method={method}] button.download-npy")
        download = info.value
        assert download.suggested_filename == f"{method}_285.npy"
        path = tmp_path / download.suggested_filename
        download.save_as(path)
        saved = np.load(path, allow_pickle=False)
        assert saved.dtype == np.dtype("<f4") and saved.shape == (224, 224)
        if method == "gradcam":  # one forward/backward: bit for bit
            np.testing.assert_array_equal(saved, api[key])
        else:  # IG's steps may be packed into other chunks on another call
            np.testing.assert_allclose(saved, api[key], rtol=1e-4, atol=1e-6 * np.abs(api[key]).max())
    with page.expect_download() as info:
        page.click("article.card[data-method=gradcam] button.download-png")
    png = tmp_path / "gradcam.png"
    info.value.save_as(png)
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (451, 300)


@needs_chromium
def test_an_api_error_is_shown_with_status_code_and_field(tab, cat_png):
    tab.choose(cat_png, ("gradcam", "ig"))
    page = tab.page
    page.click("[data-method=ig] details summary")
    page.fill("#param-ig-n_steps", "5000")  # ListModels says at most 1024
    assert tab.run() == "error"
    error = page.locator("#error")
    assert error.is_visible()
    assert error.get_attribute("data-status") == "400"
    assert error.get_attribute("data-field") == "methods[1].integrated_gradients.n_steps"
    text = error.inner_text()
    assert "HTTP 400" in text and "INVALID_ARGUMENT" in text and "5000" in text, text
    assert "invalid" in (page.get_attribute("#param-ig-n_steps", "class") or "")
    assert page.locator("article.card").count() == 0
    # A class list the page cannot send is refused before anything goes out.
    page.fill("#param-ig-n_steps", "8")
    page.check("input[name=targets][value=classes]")
    page.fill("#classes", "285, cat")
    page.click("#run")
    page.wait_for_selector("#error[data-field='targets.classes.indices']")
    assert "Not sent" in error.inner_text() and '"cat"' in error.inner_text()
    assert tab.errors == []


@needs_chromium
def test_stop_ends_the_stream_and_keeps_the_maps_that_came(tab, cat_png):
    tab.choose(cat_png, ("gradcam", "ig"))
    page = tab.page
    page.click("[data-method=ig] details summary")
    page.fill("#param-ig-n_steps", "512")
    page.click("#run")
    page.wait_for_selector("article.card[data-method=gradcam][data-state=done]", timeout=120_000)
    assert page.get_attribute("article.card[data-method=ig]", "data-state") == "pending"
    page.click("#cancel")
    page.wait_for_selector("#status[data-state=stopped]")
    assert page.get_attribute("article.card[data-method=ig]", "data-state") == "missing"
    assert page.get_attribute("article.card[data-method=gradcam]", "data-state") == "done"
    assert page.is_hidden("#error") and page.is_enabled("#run")
    assert tab.errors == []


# Mean |RGB difference| of the canvas from the photograph drawn alone inside the box [x0, x1) x
# [y0, y1), and from the photograph at 35 % brightness left and right of the columns [X0, X1).
REGION_STATS = """([canvas, [x0, x1, y0, y1], [X0, X1]]) => {
  const w = canvas.width, h = canvas.height;
  const drawn = canvas.getContext('2d').getImageData(0, 0, w, h).data;
  const plain = document.createElement('canvas');
  plain.width = w; plain.height = h;
  const ctx = plain.getContext('2d');
  ctx.drawImage(document.getElementById('preview'), 0, 0, w, h);
  const photo = ctx.getImageData(0, 0, w, h).data;
  let inside = 0, nIn = 0, outside = 0, nOut = 0;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const i = 4 * (y * w + x);
    const seen = x >= x0 && x < x1 && y >= y0 && y < y1;
    const unseen = x < X0 || x >= X1;
    if (!seen && !unseen) continue;
    let d = 0;
    for (let c = 0; c < 3; c++) d += Math.abs(drawn[i + c] - (seen ? photo[i + c] : 0.35 * photo[i + c])) / 3;
    if (seen) { inside += d; nIn++; } else { outside += d; nOut++; }
  }
  return {inside: inside / nIn, outside: outside / nOut};
}"""


@needs_chromium
def test_a_crop_model_map_covers_only_what_the_model_saw(tab, cat_png):
    tab.choose(cat_png, ("gradcam",), model=CROP_MODEL)
    assert tab.run() == "done", tab.page.inner_text("#error")
    canvas = tab.page.locator("article.card[data-method=gradcam]").locator("canvas").element_handle()
    (left, right), (top, bottom) = CROP_COLUMNS, CROP_ROWS
    inner = [round(left) + 2, round(right) - 2, round(top) + 2, round(bottom) - 2]
    stats = tab.page.evaluate(REGION_STATS, [canvas, inner, [round(left) - 2, round(right) + 2]])
    assert stats["outside"] < 2.0, stats  # left and right of the crop: dimmed, no colour
    assert stats["inside"] > 3.0, stats  # the map, drawn over the part the model saw
    assert "64×64" in tab.page.locator("article.card[data-method=gradcam] .info").inner_text()
    assert tab.errors == []


@needs_chromium
def test_a_bundled_photograph_can_be_picked_and_a_non_image_is_refused(tab, tmp_path):
    page = tab.page
    assert page.is_disabled("#run")  # nothing to explain yet
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("#error[data-field=image]")
    assert "notes.png is not a PNG, JPEG or WebP file" in page.inner_text("#error")
    assert page.is_disabled("#run")
    page.click("button.sample[data-sample=coffee]")
    page.wait_for_selector("#preview:not([hidden])")
    assert page.inner_text("#drop-text").startswith("coffee.jpg · 512×")
    assert page.is_enabled("#run")
    natural = page.evaluate("[document.getElementById('preview').naturalWidth, document.getElementById('preview').naturalHeight]")
    assert max(natural) == 512
    assert tab.errors == []


@needs_chromium
def test_the_token_field_is_sent_as_a_bearer_token(browser, server):
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(server.url)
        page.wait_for_selector("#error:not([hidden])")
        assert page.get_attribute("#error", "data-status") == "401"
        assert "UNAUTHENTICATED" in page.inner_text("#error")
        assert page.get_attribute("#status", "data-state") == "error"
        assert page.locator("#model option").count() == 0
        page.fill("#token", "not-" + TOKEN)
        page.dispatch_event("#token", "change")
        page.wait_for_selector("#status[data-state=error]")
        assert page.get_attribute("#error", "data-status") == "401"
        page.fill("#token", TOKEN)
        page.dispatch_event("#token", "change")
        page.wait_for_selector(f"#model option[value={MODEL}]", state="attached")
        assert page.is_hidden("#error")
        assert page.evaluate("sessionStorage.getItem('saliency.token')") == TOKEN
        page.reload()  # kept for the tab's session
        page.wait_for_selector(f"#model option[value={MODEL}]", state="attached")
        assert page.input_value("#token") == TOKEN
    finally:
        context.close()


def test_screenshot_for_the_docs_exists():
    """docs/web-page.png is the README's picture of the page (refreshed by hand from out/)."""
    with Image.open(ROOT / "docs" / "web-page.png") as image:
        assert image.format == "PNG" and image.width >= 1000
