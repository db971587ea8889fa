"""The serving page in a real browser: ``resnets serve`` in a subprocess on loopback, driven by
Debian's headless Chromium through Playwright, with a real CIFAR-10 image.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``. Without it the tests
skip, except under CI (``$CI`` set), where they fail: ``.ci/run`` installs it.

``RESNETS_SERVE_SCREENSHOT=docs/serve_page.png pytest tests/test_serve_browser.py`` also writes the
screenshot shown in the docs.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WEIGHTS = REPO / "src" / "resnets" / "assets" / "weights" / "resnet20_cifar10.safetensors"
TOKEN = "page-test-token"
TIMEOUT_MS = 60_000  # per browser wait; the machine running the suite may be busy


def _need_browser() -> None:
    if CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK):
        return
    message = f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium; .ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the browser test: {message}")
    pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``resnets serve`` with the shipped ResNet-20 and a token, on a free loopback port."""
    _need_browser()
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("fastapi")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = {key: value for key, value in os.environ.items() if key != "RESNETS_SERVE_TOKEN"}
    command = [sys.executable, "-m", "resnets.cli", "serve", "--weights", "cifar10", "--model", "resnet20",
               "--host", "127.0.0.1", "--port", str(port), "--token", TOKEN]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"resnets serve exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                if _get(f"{base}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"resnets serve not ready after 120 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """A fresh page that may only talk to the server: any other request (a CDN, a web font) is
    refused and recorded, as are uncaught script errors."""
    context = browser.new_context(viewport={"width": 1040, "height": 600})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.outside_requests, page.script_errors = [], []

    def only_the_server(route):
        if route.request.url.startswith(server + "/") or route.request.url.startswith(("blob:", "data:")):
            route.continue_()
        else:
            page.outside_requests.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    page.on("pageerror", lambda error: page.script_errors.append(str(error)))
    yield page
    context.close()


@pytest.fixture(scope="module")
def cat_image(cifar_train_dir) -> Path:
    """A real CIFAR-10 cat that the shipped ResNet-20 classifies correctly and confidently (chosen
    with the library's own predict, independent of the server)."""
    from resnets.train.evaluate import predict

    candidates = sorted((cifar_train_dir / "cat").glob("*.jpg"))[:24]
    for result in predict(WEIGHTS, candidates, topk=1):
        if result["top"][0]["class"] == "cat" and result["top"][0]["prob"] >= 0.8:
            return Path(result["path"])
    pytest.fail("none of the first 24 cats is classified as a cat with p >= 0.8 by the shipped weights")


def _api_predict(server: str, path: Path) -> dict:
    import httpx

    response = httpx.post(f"{server}/v1/predict", params={"topk": 5}, timeout=60,
                          headers={"Authorization": f"Bearer {TOKEN}"},
                          files=[("images", (path.name, path.read_bytes(), "image/jpeg"))])
    assert response.status_code == 200, response.text
    return response.json()["predictions"][0]


def _drop_file(page, name: str, data: bytes, mime: str) -> None:
    """Drag-and-drop of a file onto the drop zone, as a user's drop dispatches it."""
    transfer = page.evaluate_handle(
        """([name, b64, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: mime}));
            return transfer;
        }""", [name, base64.b64encode(data).decode(), mime])
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})


def test_page_classifies_a_real_image(server, page, cat_image, tmp_path):
    page.add_init_script(f"sessionStorage.setItem('resnets-serve-token', {json.dumps(TOKEN)})")
    page.goto(server + "/")
    page.wait_for_function("document.body.dataset.model === 'loaded'")

    status, body = _get(f"{server}/v1/model", TOKEN)
    assert status == 200
    model = json.loads(body)
    assert page.inner_text("#model-name") == model["name"] == "resnet20"
    assert model["sha256"].startswith(page.inner_text("#model-sha")) and len(page.inner_text("#model-sha")) >= 8
    assert page.inner_text("#model-accuracy").endswith("%")
    assert "airplane" in page.inner_text("#model-classes")
    assert page.is_hidden("#auth") and page.is_hidden("#error")

    # The file picker is reachable and opened from the keyboard alone.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "file-input"
    # Headless Chromium now and then drops the first key press on a file input (seen once in ~6 runs
    # as a 60 s timeout), so Space is pressed up to three times; a chooser must still open from it.
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    for attempt in range(3):
        try:
            with page.expect_file_chooser(timeout=10_000) as chooser:
                page.keyboard.press("Space")
            break
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise
            assert page.evaluate("document.activeElement.id") == "file-input"
    chooser.value.set_files(str(cat_image))
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)")
    assert page.is_hidden("#error"), page.inner_text("#error")

    expected = _api_predict(server, cat_image)
    assert expected["top"][0]["class"] == "cat"
    assert page.inner_text("#top1-class") == "cat"
    rows = page.locator("#predictions li")
    assert rows.count() == 5
    assert [rows.nth(i).get_attribute("data-class") for i in range(5)] == [t["class"] for t in expected["top"]]
    assert page.inner_text("#top1-prob") == f"({100 * expected['top'][0]['prob']:.1f}%)"
    bar = page.eval_on_selector("#predictions li .fill", "el => el.getBoundingClientRect().width")
    track = page.eval_on_selector("#predictions li .bar", "el => el.getBoundingClientRect().width")
    assert bar == pytest.approx(track * expected["top"][0]["prob"], abs=2)

    assert page.is_visible("#preview") and page.evaluate("document.getElementById('preview').naturalWidth") == 32
    assert page.is_visible("#overlay")
    overlay = page.evaluate("""() => { const img = document.getElementById('overlay');
                                       return [img.complete, img.naturalWidth, img.naturalHeight, img.alt]; }""")
    assert overlay[0] and overlay[1] > 0 and overlay[2] > 0, overlay
    assert "cat" in overlay[3]

    screenshot = tmp_path / "serve_page.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 10_000
    if os.environ.get("RESNETS_SERVE_SCREENSHOT"):
        page.screenshot(path=os.environ["RESNETS_SERVE_SCREENSHOT"])

    # A dropped file that is not an image: the API's error is shown, the old results are cleared.
    _drop_file(page, "notes.jpg", b"this is not a JPEG", "image/jpeg")
    page.wait_for_function("document.body.dataset.state === 'error'")
    assert page.is_visible("#error")
    assert page.get_attribute("#error", "data-code") == "bad_image"
    assert "HTTP 400" in page.inner_text("#error")
    assert page.locator("#predictions li").count() == 0

    assert page.outside_requests == []
    assert page.script_errors == []


def test_page_asks_for_the_token(server, page, cat_image):
    page.goto(server + "/")
    page.wait_for_selector("#auth", state="visible")
    assert page.get_attribute("#error", "data-code") == "unauthorized"
    assert page.evaluate("document.activeElement.id") == "token-input"

    page.fill("#token-input", "wrong-token")
    page.press("#token-input", "Enter")
    page.wait_for_function("document.getElementById('error').textContent.includes('refused')")
    assert page.is_visible("#auth")

    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    page.wait_for_function("document.body.dataset.model === 'loaded'")
    assert page.is_hidden("#auth") and page.is_hidden("#error")
    assert page.evaluate("sessionStorage.getItem('resnets-serve-token')") == TOKEN

    _drop_file(page, cat_image.name, cat_image.read_bytes(), "image/jpeg")
    page.wait_for_function("['done', 'error'].includes(document.body.dataset.state)")
    assert page.inner_text("#top1-class") == "cat", page.inner_text("#error")
    assert page.outside_requests == []
    assert page.script_errors == []


def test_page_waits_for_a_starting_server(server, page):
    """A server still loading its model answers 503 not_ready: the page says so, then asks again
    (after Retry-After) and fills in the model card once the server is ready."""
    refusals = []

    def starting_once(route):
        if refusals:
            route.continue_()
            return
        refusals.append(route.request.url)
        route.fulfill(status=503, headers={"Retry-After": "1"}, content_type="application/json",
                      body=json.dumps({"error": {"code": "not_ready", "message": "the server is starting"}}))

    page.route("**/v1/model", starting_once)
    page.add_init_script(f"sessionStorage.setItem('resnets-serve-token', {json.dumps(TOKEN)})")
    page.goto(server + "/")
    page.wait_for_selector("#error", state="visible")
    assert page.get_attribute("#error", "data-code") == "not_ready"
    assert "starting" in page.inner_text("#error")
    page.wait_for_function("document.body.dataset.model === 'loaded'")
    assert page.is_hidden("#error")
    assert page.inner_text("#model-name") == "resnet20"
    assert len(refusals) == 1
    assert page.script_errors == []
