"""The web UI in a real browser: Debian's headless Chromium driven by Playwright, against the page
served on the tiny preset. Never skipped — without a browser the tests fail and say what to install.

Set ``MSD_UPDATE_SCREENSHOT=1`` to (re)write ``docs/ui.png`` from the filled page; it is written
anyway when missing. ``MSD_CHROMIUM`` points at another Chromium binary.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "docs" / "ui.png"
CHROMIUM = os.environ.get("MSD_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = (
    "install Debian's chromium (`apt-get install chromium`, or `bash "
    "scripts/install_browser.sh`, which `make test` runs) and the Python package "
    "(`pip install playwright==1.65.2`; never `playwright install`), or set "
    "MSD_CHROMIUM to a Chromium binary"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The page on the tiny preset, on a free localhost port; yields (url, outputs folder, demo)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from msdiffusion.loading import load_pipeline
    from msdiffusion.ui.app import launch

    out_dir = tmp_path_factory.mktemp("ui-outputs")
    port = free_port()
    demo = launch(load_pipeline("tiny"), port=port, out_dir=out_dir, block=False)
    yield f"http://127.0.0.1:{port}/", out_dir, demo
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"no Chromium at {CHROMIUM}: {INSTALL_HINT}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright package is missing: {INSTALL_HINT}", pytrace=False)
    with sync_playwright() as p:
        try:
            chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as err:  # a broken install: say what failed and what to install
            pytest.fail(
                f"Chromium at {CHROMIUM} did not start ({err}): {INSTALL_HINT}", pytrace=False
            )
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser, server):
    """A fresh page; fails the test if the page asked for anything outside this server."""
    url = server[0]
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    tab = context.new_page()
    outside: list[str] = []
    tab.on(
        "request",
        lambda r: None if r.url.startswith((url, "data:", "blob:")) else outside.append(r.url),
    )
    tab.goto(url)
    tab.locator("#layout-canvas .msd-frame").wait_for(timeout=20_000)
    yield tab
    context.close()
    assert outside == [], f"the page fetched from outside the server: {outside[:5]}"


def reference_images(tmp_path: Path) -> list[Path]:
    """The repository's own example subjects (the screenshot in docs/ shows them)."""
    examples = REPO / "examples" / "subjects"
    return [examples / "dog.png", examples / "cat.png"]


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input:not([type=file])").first


def eventually(check, timeout: float = 15.0):
    """``check()`` until it stops raising AssertionError: the page updates asynchronously (its
    events run in the browser's queue, later on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_draw_boxes_generate_and_keep_the_recipe(page, server, tmp_path):
    _, out_dir, demo = server
    # the server's guard rails: localhost only, no share link, one generation, a bounded queue
    assert demo.server_name == "127.0.0.1" and not demo.share
    assert demo._queue.max_size == 8
    [generate_fn] = [fn for fn in demo.fns.values() if fn.concurrency_id == "generate"]
    assert generate_fn.concurrency_limit == 1

    dog, cat = reference_images(tmp_path)
    page.locator("#s0-images input[type=file]").set_input_files(str(dog))
    page.locator("#s1-images input[type=file]").set_input_files(str(cat))
    field(page, "prompt").fill("a dog and a cat on the beach")
    field(page, "s0-phrase").fill("dog")
    field(page, "s1-phrase").fill("cat")
    page.get_by_text("Generation settings", exact=True).click()
    steps = page.locator("#steps input[type=number]")

    def three_steps():
        if steps.input_value() != "3":
            steps.fill("3")
            steps.press("Enter")
        assert page.locator("#steps input[type=range]").input_value() == "3"

    eventually(three_steps)

    frame = page.locator("#layout-canvas .msd-frame")
    frame.scroll_into_view_if_needed()
    drags = [(0.06, 0.28, 0.48, 0.86), (0.52, 0.22, 0.95, 0.9)]  # fractions of the canvas
    dragged = []
    for fx0, fy0, fx1, fy1 in drags:
        rect = frame.bounding_box()
        x0, y0 = rect["x"] + fx0 * rect["width"], rect["y"] + fy0 * rect["height"]
        x1, y1 = rect["x"] + fx1 * rect["width"], rect["y"] + fy1 * rect["height"]
        page.mouse.move(x0, y0)
        page.mouse.down()
        page.mouse.move((x0 + x1) / 2, (y0 + y1) / 2, steps=4)
        page.mouse.move(x1, y1, steps=4)
        page.mouse.up()
        dragged.append((x0 - rect["x"], y0 - rect["y"], x1 - rect["x"], y1 - rect["y"]))

    def drawn():
        labels = page.locator("#layout-canvas .msd-box .msd-label").all_inner_texts()
        assert labels == ["1. dog", "2. cat"]
        # the canvas filled the numeric box fields, which the request is built from
        assert all(field(page, f"s{k}-box").input_value() for k in (0, 1))

    eventually(drawn)
    page.locator("#generate").click()
    page.locator("#sidecars a").first.wait_for(timeout=120_000)
    page.locator("#results img").first.wait_for(timeout=10_000)
    sidecars = sorted(out_dir.glob("*/image_0.json"))
    assert len(sidecars) == 1
    recipe = json.loads(sidecars[0].read_text())["request"]
    assert [s["phrase"] for s in recipe["subjects"]] == ["dog", "cat"]
    assert (recipe["width"], recipe["height"], recipe["num_inference_steps"]) == (256, 256, 3)
    for subject, pixels in zip(recipe["subjects"], dragged, strict=True):
        box = subject["box"]
        in_canvas_px = (
            box[0] * rect["width"],
            box[1] * rect["height"],
            box[2] * rect["width"],
            box[3] * rect["height"],
        )
        gaps = [abs(a - b) for a, b in zip(in_canvas_px, pixels, strict=True)]
        assert max(gaps) <= 1.0, (box, pixels)  # within one canvas pixel
        reference = sidecars[0].parent / subject["images"][0]
        assert reference.is_file()  # the recipe's references are kept with the result
    assert (sidecars[0].parent / "image_0_overlay.png").is_file()
    assert "seed 0" in page.locator("#status").inner_text()

    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as image:
        assert image.width >= 1400 and image.height > 900
    if os.environ.get("MSD_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        tmp = SCREENSHOT.with_name(f".{SCREENSHOT.name}.tmp")
        with Image.open(shot) as image:  # 256 colours: a third of the size, same look
            image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
                tmp, format="PNG", optimize=True
            )
        os.replace(tmp, SCREENSHOT)


def test_errors_show_next_to_their_field(page, server, tmp_path):
    field(page, "prompt").fill("a dog and a cat")
    field(page, "s0-phrase").fill("dog")
    dog, _ = reference_images(tmp_path)
    page.locator("#s0-images input[type=file]").set_input_files(str(dog))
    field(page, "s0-box").fill("0.5, 0.2, 0.3")
    field(page, "s1-phrase").fill("cat")  # a phrase without an image
    runs_before = sorted(server[1].iterdir())
    page.locator("#generate").click()
    page.locator("#s1-images").get_by_text("add a reference image").wait_for(timeout=10_000)
    page.locator("#s0-box").get_by_text("four numbers").wait_for(timeout=5_000)
    assert page.locator("text=Traceback").count() == 0
    assert sorted(server[1].iterdir()) == runs_before  # nothing ran


def test_example_layout_and_loading_a_sidecar(page, server, tmp_path):
    from msdiffusion.inference import GenerationResult, write_result
    from msdiffusion.ui import handlers as h

    page.locator("#layout-2").click()  # subject + scene
    page.locator("#layout-canvas .msd-box").nth(1).wait_for(timeout=15_000)

    def preset_applied():
        assert field(page, "s1-box").input_value() == "0, 0, 1, 1"
        assert field(page, "prompt").input_value() == "a dog with a mountain in the background"

    eventually(preset_applied)

    # a sidecar of this page's own results, uploaded from the browser, restores the fields
    dog, cat = reference_images(tmp_path)
    form = h.Form(prompt="two pets", width=192, height=128, steps=7, seed=5)
    form.subjects[0] = h.SubjectForm(images=[str(dog)], phrase="dog", box="0.1, 0.2, 0.5, 0.9")
    form.subjects[1] = h.SubjectForm(
        images=[str(cat)], phrase="cat", box="0.5, 0.1, 0.9, 0.8", scale="0.9"
    )
    run_dir = server[1] / "19990101-000000-test"
    copied = h.build_request(form)
    copied.subjects = [
        type(s)(
            images=h.copy_files(s.images, run_dir / "references"),
            box=s.box,
            phrase=s.phrase,
            scale=s.scale,
        )
        for s in copied.subjects
    ]
    [record] = write_result(
        GenerationResult(copied, [Image.new("RGB", (192, 128))], [5]),
        run_dir,
        {"preset": "tiny"},
        stem="image",
    )
    page.get_by_text("Load or save a request", exact=True).click()
    page.locator("#load_request input[type=file]").set_input_files(record["sidecar"])
    page.locator("#load_status").get_by_text("Loaded").wait_for(timeout=15_000)

    def restored():
        assert field(page, "prompt").input_value() == "two pets"
        assert [field(page, f"s{k}-phrase").input_value() for k in range(3)] == ["dog", "cat", ""]
        assert field(page, "s1-box").input_value() == "0.5, 0.1, 0.9, 0.8"
        assert field(page, "s1-scale").input_value() == "0.9"
        assert (field(page, "width").input_value(), field(page, "height").input_value()) == (
            "192",
            "128",
        )
        assert page.locator("#s1-images img").count() >= 1
        labels = page.locator("#layout-canvas .msd-box .msd-label").all_inner_texts()
        assert labels == ["1. dog", "2. cat"]
        style = page.locator("#layout-canvas .msd-frame").get_attribute("style")
        assert "192 / 128" in style

    eventually(restored)


def test_boxes_move_resize_and_clear(page):
    frame = page.locator("#layout-canvas .msd-frame")
    frame.scroll_into_view_if_needed()

    def drag(start, end):
        rect = frame.bounding_box()
        page.mouse.move(rect["x"] + start[0] * rect["width"], rect["y"] + start[1] * rect["height"])
        page.mouse.down()
        page.mouse.move(
            rect["x"] + end[0] * rect["width"], rect["y"] + end[1] * rect["height"], steps=5
        )
        page.mouse.up()

    def box_is(expected, abs=2e-3, part=slice(0, 4)):
        def check():
            text = field(page, "s0-box").input_value()
            assert text, "no box yet"
            assert [float(v) for v in text.split(",")][part] == pytest.approx(expected, abs=abs)

        eventually(check)

    drag((0.1, 0.1), (0.4, 0.5))  # draw subject 1
    box_is([0.1, 0.1, 0.4, 0.5])
    page.locator("#layout-canvas .msd-chip").first.click()  # drawing moved on to subject 2
    drag((0.25, 0.3), (0.45, 0.5))  # move it by (+0.2, +0.2)
    box_is([0.3, 0.3, 0.6, 0.7])
    corner = page.locator('#layout-canvas .msd-box[data-k="0"] .msd-handle[data-corner="se"]')
    c = corner.bounding_box()
    rect = frame.bounding_box()
    page.mouse.move(c["x"] + c["width"] / 2, c["y"] + c["height"] / 2)
    page.mouse.down()
    page.mouse.move(rect["x"] + 0.9 * rect["width"], rect["y"] + 0.95 * rect["height"], steps=5)
    page.mouse.up()  # resize from the bottom-right corner
    box_is([0.9, 0.95], abs=0.01, part=slice(2, 4))
    box_is([0.3, 0.3], part=slice(0, 2))
    field(page, "s0-box").fill("0.05, 0.1, 0.5, 0.6")
    field(page, "s0-box").press("Enter")  # typed numbers move the box on the canvas

    def moved():
        style = page.locator('#layout-canvas .msd-box[data-k="0"]').get_attribute("style")
        assert "left: 5%" in style and "width: 45%" in style

    eventually(moved)
    page.locator('#layout-canvas .msd-box[data-k="0"]').click()
    page.keyboard.press("Delete")  # the selected subject's box is removed
    page.locator('#layout-canvas .msd-box[data-k="0"]').wait_for(state="detached", timeout=15_000)

    def cleared():
        assert field(page, "s0-box").input_value() == ""

    eventually(cleared)
