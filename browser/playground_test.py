"""End-to-end test of `cnn serve` in a real browser (Debian's headless Chromium driven by
chromedriver through Selenium): draws an X and then an O stroke by stroke on the canvas with
synthetic pointer events and checks that the page names the letter as the top class and shows
the feature maps; then steps through the worked-example page. Screenshots go to the artifacts
folder.

    python browser/playground_test.py CNN_BINARY MODEL ARTIFACTS_DIR

Talks only to the server it starts on 127.0.0.1; every wait is bounded.
"""

import math
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver import ActionChains
from selenium.webdriver.common.actions import interaction
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.actions.pointer_input import PointerInput
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

PAD = 280  # the canvas's CSS size in pixels


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(binary, model, port):
    server = subprocess.Popen(
        [binary, "serve", "--model", model, "--addr", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"cnn serve exited: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("cnn serve did not answer within 30 s")


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1600",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    driver.set_page_load_timeout(30)
    return driver


def draw(driver, strokes):
    """Each stroke is a list of (x, y) canvas points: pointer down at the first, moves through
    the rest, up at the last, as a person drawing with a mouse."""
    pad = driver.find_element(By.ID, "pad")
    for stroke in strokes:
        mouse = PointerInput(interaction.POINTER_MOUSE, "mouse")
        actions = ActionBuilder(driver, mouse=mouse, duration=15)
        x, y = stroke[0]
        actions.pointer_action.move_to(pad, int(x - PAD / 2), int(y - PAD / 2))
        actions.pointer_action.pointer_down()
        for x, y in stroke[1:]:
            actions.pointer_action.move_to(pad, int(x - PAD / 2), int(y - PAD / 2))
        actions.pointer_action.pointer_up()
        actions.perform()


def line(a, b, steps=14):
    return [(a[0] + (b[0] - a[0]) * i / steps, a[1] + (b[1] - a[1]) * i / steps) for i in range(steps + 1)]


LETTERS = {
    "X": [line((60, 55), (222, 228)), line((220, 52), (62, 226))],
    "O": [
        [
            (140 + 82 * math.sin(2 * math.pi * i / 40), 140 - 100 * math.cos(2 * math.pi * i / 40))
            for i in range(42)
        ]
    ],
}


def check_letter(driver, url, letter, artifacts):
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "model-line").text != "")
    # Count the requests to /api/predict in flight at once, as the page makes them.
    driver.execute_script("""
        window.inFlight = 0; window.mostInFlight = 0; window.requests = 0;
        const original = window.fetch;
        window.fetch = (...args) => {
            window.requests += 1;
            window.inFlight += 1;
            window.mostInFlight = Math.max(window.mostInFlight, window.inFlight);
            return original(...args).finally(() => { window.inFlight -= 1; });
        };
    """)
    draw(driver, LETTERS[letter])
    # The page sends a request per stroke event, one at a time, and the last answer is for the
    # finished drawing once nothing is in flight.
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "return document.body.dataset.state === 'idle' && !!document.body.dataset.predictions"
        )
    )
    requests, most = driver.execute_script("return [window.requests, window.mostInFlight]")
    shown = driver.execute_script("return document.body.dataset.probability")
    # The answer for the finished drawing, asked for afresh.
    final = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        document.getElementById("pad").toBlob((blob) =>
            fetch("/api/predict", { method: "POST", headers: { "Content-Type": "image/png" }, body: blob })
                .then((r) => r.json()).then((j) => done(String(j.probability))), "image/png");
    """)
    top = driver.find_element(By.ID, "top").get_attribute("data-class")
    maps = driver.execute_script("return document.querySelectorAll('canvas.map').length")
    drawn = driver.execute_script(
        "return Array.from(document.querySelectorAll('canvas.map')).filter(c => c.width > 0 && c.height > 0).length"
    )
    text = driver.find_element(By.ID, "top").text
    shot = artifacts / f"playground-{letter.lower()}.png"
    driver.save_screenshot(str(shot))
    failures = []
    if most != 1:
        failures.append(f"drew {letter}: {most} requests in flight at once (of {requests})")
    if shown != final:
        failures.append(f"drew {letter}: the page settled on probability {shown}, the finished "
                        f"drawing gives {final}")
    if top != letter:
        failures.append(f"drew {letter}, the page's top class is {top!r} ({text})")
    if maps < 10 or drawn != maps:
        failures.append(f"drew {letter}: {maps} feature-map canvases, {drawn} with pixels")
    print(f"{letter}: top class {text!r}, {maps} feature-map images, {requests} requests, at most "
          f"{most} in flight, screenshot {shot}")
    return failures


def click_cell(driver, node, channel, y, x):
    """Clicks value (y, x) of map `channel` of node `node` on the drawing page."""
    canvas = driver.find_element(By.CSS_SELECTOR, f'canvas.map[data-node="{node}"][data-channel="{channel}"]')
    box = driver.execute_script(
        "const b = arguments[0].getBoundingClientRect();"
        "return [b.width, b.height, arguments[0].width, arguments[0].height];",
        canvas,
    )
    scale_x, scale_y = box[0] / box[2], box[1] / box[3]
    dx = int((x + 0.5) * scale_x - box[0] / 2)
    dy = int((y + 0.5) * scale_y - box[1] / 2)
    driver.execute_script("document.querySelectorAll('pre.arithmetic').forEach(p => p.remove())")
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.ID, "arithmetic"))
    return driver.find_element(By.ID, "arithmetic").text


def marked(driver, node, channel):
    return driver.execute_script(
        f'return document.querySelector(\'canvas.map[data-node="{node}"][data-channel="{channel}"]\').dataset.marked'
    )


def check_cell_click(driver, url, artifacts):
    """Clicking a feature-map cell shows how it was computed (the same arithmetic as
    `cnn explain --at`) and marks its window on the maps it was computed from."""
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "model-line").text != "")
    draw(driver, LETTERS["X"])
    WebDriverWait(driver, 20).until(
        lambda d: d.execute_script(
            "return document.body.dataset.state === 'idle' && !!document.body.dataset.predictions"
        )
    )
    failures = []
    conv = click_cell(driver, 0, 3, 10, 14)
    for expected in ["node 0 (conv", "channel 3, row 10, column 14:", "the input, channel 0, rows 9-11, columns 13-15",
                     "sum of the products", "(the engine computed", "then node 1 (relu"]:
        if expected not in conv:
            failures.append(f"clicked conv cell 3,10,14: no {expected!r} in {conv!r}")
    if marked(driver, -1, 0) != "9":
        failures.append(f"clicked conv cell 3,10,14: {marked(driver, -1, 0)} input pixels marked, not 9")
    driver.save_screenshot(str(artifacts / "playground-cell.png"))
    pool = click_cell(driver, 2, 0, 5, 7)
    for expected in ["node 2 (maxpool 2", "the largest value in a window of node 1, channel 0", "marked [ ]"]:
        if expected not in pool:
            failures.append(f"clicked pool cell 0,5,7: no {expected!r} in {pool!r}")
    if marked(driver, 1, 0) != "4" or marked(driver, -1, 0) != "0":
        failures.append(f"clicked pool cell 0,5,7: {marked(driver, 1, 0)} cells of node 1 marked, not 4")
    print(f"cell click: {conv.splitlines()[0]} / {pool.splitlines()[0]}")
    return failures


def check_train_page(driver, url, artifacts):
    """The /train page trains the X/O network to at least 95% held-out accuracy, the curve and
    the filters updating as it goes; a second job is refused while one runs; predictions are
    answered meanwhile; the drawing page then switches to the trained model."""
    driver.get(url + "train")
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.checked === 'true'"))
    # A typo is caught as it is typed, with its position.
    area = driver.find_element(By.ID, "arch")
    original = area.get_attribute("value")
    area.clear()
    area.send_keys("conv 8@3x3, relu, maxpol 2")
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.checked === 'false'"))
    typo = driver.find_element(By.ID, "check").text
    area.clear()
    area.send_keys(original)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.checked === 'true'"))
    epochs = driver.find_element(By.ID, "epochs")
    epochs.clear()
    epochs.send_keys("4")
    driver.find_element(By.ID, "start").click()
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.state === 'training'"))
    # While it trains: a second job is refused, and a prediction is answered.
    second, predicted = driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const canvas = document.createElement("canvas");
        canvas.width = 28; canvas.height = 28;
        const second = fetch("/api/train/start", { method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify({ data: "xo", arch: "xo", epochs: 1 }) }).then((r) => r.json().then((j) => r.status + " " + j.error));
        const predicted = new Promise((resolve) => canvas.toBlob(resolve, "image/png")).then((blob) =>
            fetch("/api/predict", { method: "POST", headers: { "Content-Type": "image/png" }, body: blob }))
            .then((r) => r.status);
        Promise.all([second, predicted]).then(done);
    """)
    WebDriverWait(driver, 180).until(
        lambda d: d.execute_script("return ['done', 'error'].includes(document.body.dataset.state)")
    )
    data = driver.execute_script("return Object.assign({}, document.body.dataset)")
    driver.save_screenshot(str(artifacts / "train-page.png"))
    failures = []
    if "line 1, column" not in typo or "maxpol" not in typo:
        failures.append(f"the typo was not pointed at: {typo!r}")
    if not second.startswith("409") or "one at a time" not in second:
        failures.append(f"a second job while one runs: {second}")
    if predicted != 200:
        failures.append(f"a prediction while training answered {predicted}")
    if data.get("state") != "done" or float(data.get("accuracy", 0)) < 0.95:
        failures.append(f"training ended {data.get('state')} at held-out accuracy {data.get('accuracy')}")
    if int(data.get("points", 0)) < 6:
        failures.append(f"the curve has {data.get('points')} points")
    if int(data.get("filterUpdates", 0)) < 4 or data.get("filtersChanged") != "true":
        failures.append(f"the filters were shown {data.get('filterUpdates')} times, changed: {data.get('filtersChanged')}")
    driver.find_element(By.ID, "use").click()
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.body.dataset.used === 'true'"))
    print(f"train page: held-out accuracy {data.get('accuracy')}, {data.get('points')} curve points, "
          f"{data.get('filterUpdates')} filter updates, second job: {second}, prediction meanwhile: {predicted}")
    return failures


def check_example_page(driver, url, artifacts):
    driver.get(url + "example")
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "table.grid"))
    for _ in range(4):
        driver.find_element(By.ID, "next").click()
    explanation = driver.find_element(By.ID, "explanation").text
    driver.save_screenshot(str(artifacts / "example-page.png"))
    print(f"example page, step 5: {explanation[:100]}...")
    # Step 3 is the first window of the `\\` feature: 7 of 9 products are +1, mean 0.78.
    driver.find_element(By.ID, "prev").click()
    driver.find_element(By.ID, "prev").click()
    first = driver.find_element(By.ID, "explanation").text
    if "7/9 = 0.78" not in first:
        return [f"the first window of the example does not show 7/9 = 0.78: {first}"]
    # The last step is the verdict: the X is read as X, the O as O.
    failures = []
    for letter in ["x", "o"]:
        Select(driver.find_element(By.ID, "letter")).select_by_value(letter)
        WebDriverWait(driver, 10).until(
            lambda d: d.execute_script("return document.getElementById('slider').max !== '0'")
        )
        driver.execute_script(
            "const s = document.getElementById('slider'); s.value = s.max;"
            "s.dispatchEvent(new Event('input'));"
        )
        # The page reloads the example when the letter changes: wait for this letter's verdict.
        WebDriverWait(driver, 10).until(
            lambda d: d.execute_script(
                "const v = document.getElementById('verdict');"
                f"return !!v && v.textContent.startsWith('{letter.upper()} is read');"
            )
        )
        verdict = driver.find_element(By.ID, "verdict")
        if verdict.get_attribute("data-class") != letter.upper():
            failures.append(f"the example's verdict for {letter.upper()}: {verdict.text}")
        print(f"example page, last step: {verdict.text}")
    driver.save_screenshot(str(artifacts / "example-verdict.png"))
    return failures


def main():
    binary, model, artifacts = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = start_server(binary, model, port)
    url = f"http://127.0.0.1:{port}/"
    results = {}
    try:
        with tempfile.TemporaryDirectory() as profile:
            driver = browser(profile)
            try:
                for letter in ["X", "O"]:
                    results[f"draw {letter}"] = check_letter(driver, url, letter, artifacts)
                results["cell click"] = check_cell_click(driver, url, artifacts)
                results["train page"] = check_train_page(driver, url, artifacts)
                results["example page"] = check_example_page(driver, url, artifacts)
            finally:
                driver.quit()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    failed = {name: f for name, f in results.items() if f}
    for name, failures in failed.items():
        for failure in failures:
            print(f"FAILED {name}: {failure}")
    print(f"browser: {len(results) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
