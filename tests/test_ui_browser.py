"""The web UI in a real browser: Debian's headless Chromium driven by Playwright, against the page
served on the tiny preset (with a tiny LoRA), in a 1280×720 window. Never skipped — without a
browser the tests fail and say what to install.

Set ``MSD_UPDATE_SCREENSHOT=1`` to (re)write ``docs/ui.png`` from the page after a generation; it is
written anyway when missing. ``MSD_CHROMIUM`` points at another Chromium binary.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from browser_page import (
    VIEWPORT,
    assert_equal,
    box_of,
    canvas_drag,
    choose,
    count_progress_bars,
    eventually,
    field,
    on_screen,
    set_steps,
    type_into,
    whole_in_view,
)
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
def server(tmp_path_factory, tiny_lora):
    """The page on the tiny preset with one LoRA (as `msdiffusion ui --preset tiny --lora PATH`
    loads it), on a free localhost port, results in ``outputs/ui`` of a fresh folder (the default,
    relative to where the command runs); yields (url, outputs folder, demo, LoRA path)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from msdiffusion.commands.model import ModelSettings, load_model
    from msdiffusion.ui.app import launch

    workdir = tmp_path_factory.mktemp("ui-run")
    lora = str(tiny_lora.resolve())
    model = load_model(ModelSettings(preset="tiny", lora=(lora,)))
    here = os.getcwd()
    os.chdir(workdir)  # the page names its results folder as given: outputs/ui
    try:
        for attempt in range(3):
            port = free_port()
            try:
                demo = launch(model, port=port, out_dir="outputs/ui", block=False)
                break
            except ValueError:  # Gradio's own check of the new server (3 s) on a loaded machine
                if attempt == 2:
                    raise
    finally:
        os.chdir(here)
    yield f"http://127.0.0.1:{port}/", workdir / "outputs" / "ui", demo, lora
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
    context = browser.new_context(viewport=VIEWPORT)
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


def test_draw_boxes_generate_and_keep_the_recipe(page, server, tmp_path):
    _, out_dir, demo, lora = server
    # the server's guard rails: localhost only, no share link, one generation, a bounded queue
    assert demo.server_name == "127.0.0.1" and not demo.share
    assert demo._queue.max_size == 8
    [generate_fn] = [fn for fn in demo.fns.values() if fn.concurrency_id == "generate"]
    assert generate_fn.concurrency_limit == 1
    # placeholders read as hints, never as values someone typed
    for elem_id in ("prompt", "s0-phrase", "s0-box", "s0-scale"):
        hint = field(page, elem_id).get_attribute("placeholder") or ""
        assert hint and not re.fullmatch(r"[\w.]+", hint), (elem_id, hint)
    assert field(page, "random_seed").is_checked()  # a new image each time, by default

    dog, cat = reference_images(tmp_path)
    page.locator("#s0-images input[type=file]").set_input_files(str(dog))
    page.locator("#s1-images input[type=file]").set_input_files(str(cat))
    field(page, "prompt").fill("a dog and a cat on the beach")
    field(page, "s0-phrase").fill("dog")
    field(page, "s1-phrase").fill("cat")
    set_steps(page, 3)
    choose(page, "scheduler", "euler-a")
    choose(page, "lora", "none")
    choose(page, "lora", Path(lora).name)  # the LoRA the page was started with
    lora_scale = page.locator("#lora_scale input[type=number]")
    lora_scale.fill("0.5")
    lora_scale.press("Enter")

    frame = page.locator("#layout-canvas .msd-frame")
    drags = [(0.06, 0.28, 0.48, 0.86), (0.52, 0.22, 0.95, 0.9)]  # fractions of the canvas
    dragged = []
    for fx0, fy0, fx1, fy1 in drags:
        frame.scroll_into_view_if_needed()
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
    page.evaluate("window.scrollTo(0, 0)")
    assert on_screen(page, "generate") and on_screen(page, "results", whole=False)
    count_progress_bars(page)
    page.locator("#generate").click()
    page.locator("#sidecars a").first.wait_for(timeout=120_000)
    page.locator("#results img").first.wait_for(timeout=10_000)
    assert page.evaluate("window.msdMostBars") == 1  # one progress bar, over the results
    sidecars = sorted(out_dir.glob("*/image_0.json"))
    assert [p.parent.name for p in sidecars] == ["0001"]  # a numbered run folder
    data = json.loads(sidecars[0].read_text())
    recipe = data["request"]
    assert [s["phrase"] for s in recipe["subjects"]] == ["dog", "cat"]
    assert (recipe["width"], recipe["height"], recipe["num_inference_steps"]) == (256, 256, 3)
    assert recipe["scheduler"] == "euler-a" and recipe["negative_prompt"] is None
    # the sidecar's model is the one used: this LoRA at this scale (a CLI replay loads it)
    assert data["model"]["settings"]["lora"] == [lora]
    assert data["model"]["settings"]["lora_scale"] == 0.5
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
    # a random seed, shown in the status and in the seed field, the one the sidecar records
    seed = recipe["seed"]
    assert f"seed {seed}" in page.locator("#status").inner_text()
    assert "outputs/ui/0001" in page.locator("#status").inner_text()
    eventually(lambda: assert_equal(field(page, "seed").input_value(), str(seed)))
    # whole previews: references and results are shown uncropped
    fits = page.evaluate(
        """() => [...document.querySelectorAll('#s0-images img, #results img')]
        .map((img) => getComputedStyle(img).objectFit)"""
    )
    assert len(fits) >= 3 and set(fits) == {"contain"}, fits

    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "ui.png"
    page.screenshot(path=str(shot))
    with Image.open(shot) as image:
        assert image.size == (VIEWPORT["width"], VIEWPORT["height"])
    if os.environ.get("MSD_UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        tmp = SCREENSHOT.with_name(f".{SCREENSHOT.name}.tmp")
        with Image.open(shot) as image:  # 256 colours: a third of the size, same look
            image.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
                tmp, format="PNG", optimize=True
            )
        os.replace(tmp, SCREENSHOT)

    # the seed shown is reusable: untick "random" and Generate makes the same image again
    field(page, "random_seed").uncheck()
    page.locator("#generate").click()
    again = out_dir / "0002" / "image_0.json"
    eventually(lambda: assert_equal(again.is_file(), True), timeout=120)
    page.locator("#status").get_by_text("outputs/ui/0002").wait_for(timeout=15_000)
    assert json.loads(again.read_text())["request"]["seed"] == seed
    first, second = (Image.open(p.parent / "image_0.png") for p in (sidecars[0], again))
    assert first.tobytes() == second.tobytes()


def test_errors_show_next_to_their_field(page, server, tmp_path):
    dog, _ = reference_images(tmp_path)
    page.locator("#s0-images input[type=file]").set_input_files(str(dog))
    field(page, "s0-phrase").fill("dog")
    # a wrong value is said in plain words as soon as it is typed, before Generate
    type_into(page, "s0-box", "0.5, 0.2, 0.3")
    page.locator("#s0-box").get_by_text("Four numbers from 0 to 1").wait_for(timeout=15_000)
    type_into(page, "width", "100")
    page.locator("#width").get_by_text("Use a multiple of 8 pixels").wait_for(timeout=15_000)
    type_into(page, "width", "256")
    page.locator("#width").get_by_text("multiple of 8").wait_for(state="detached", timeout=15_000)
    # a field still to be filled in is not an error yet
    type_into(page, "s1-phrase", "cat")  # a phrase, no image yet
    time.sleep(1)
    assert page.locator("#s1-images").get_by_text("Add a reference image").count() == 0
    assert page.locator("#s0-box").get_by_text("Four numbers").count() == 1
    runs_before = sorted(server[1].iterdir()) if server[1].exists() else []
    page.locator("#generate").click()
    page.locator("#s1-images").get_by_text("Add a reference image").wait_for(timeout=10_000)
    page.locator("#prompt").get_by_text("Describe the picture first").wait_for(timeout=5_000)
    assert page.locator("text=Traceback").count() == 0
    assert (sorted(server[1].iterdir()) if server[1].exists() else []) == runs_before  # no run
    # fixing the value takes its message away
    type_into(page, "s0-box", "0.1, 0.2, 0.5, 0.9")
    page.locator("#s0-box").get_by_text("Four numbers").wait_for(state="detached", timeout=15_000)


def test_example_layouts_and_loading_a_sidecar(page, server, tmp_path):
    from msdiffusion.inference import GenerationResult, write_result
    from msdiffusion.ui import handlers as h

    # an example never adds subjects without images (which would stop Generate): it says so
    page.locator("#layout-1").click()  # three in a row
    page.locator("#status").get_by_text("Add a reference image to a subject first").wait_for(
        timeout=15_000
    )
    assert page.locator("#layout-canvas .msd-box").count() == 0
    assert [field(page, f"s{k}-box").input_value() for k in (0, 1)] == ["", ""]
    dog, cat = reference_images(tmp_path)
    page.locator("#s0-images input[type=file]").set_input_files(str(dog))
    page.locator("#s0-images img").first.wait_for(timeout=15_000)
    page.locator("#layout-2").click()  # subject + scene: one box fits, the scene waits
    page.locator("#status").get_by_text("add reference images to 1 more").wait_for(timeout=15_000)
    eventually(lambda: assert_equal(field(page, "s0-box").input_value(), "0.25, 0.25, 0.75, 0.75"))
    assert field(page, "s1-box").input_value() == "" and field(page, "prompt").input_value() == ""
    page.locator("#s1-images input[type=file]").set_input_files(str(cat))
    page.locator("#s1-images img").first.wait_for(timeout=15_000)
    page.locator("#layout-2").click()

    def preset_applied():
        assert field(page, "s1-box").input_value() == "0, 0, 1, 1"
        assert field(page, "s1-phrase").input_value() == "mountain"
        assert field(page, "prompt").input_value() == "a dog with a mountain in the background"
        assert page.locator("#layout-canvas .msd-box").count() == 2

    eventually(preset_applied)

    # a sidecar of this page's own results, uploaded from the browser, restores the fields
    form = h.Form(prompt="two pets", width=192, height=128, steps=7, seed=5)
    form.subjects[0] = h.SubjectForm(images=[str(dog)], phrase="dog", box="0.1, 0.2, 0.5, 0.9")
    form.subjects[1] = h.SubjectForm(
        images=[str(cat)], phrase="cat", box="0.5, 0.1, 0.9, 0.8", scale="0.9"
    )
    form.subjects[2] = h.SubjectForm(images=[str(dog)], phrase="hat", box="0.3, 0, 0.6, 0.2")
    run_dir = server[1] / "0999"
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
    info = {"preset": "tiny", "settings": {"preset": "tiny", "lora": [], "lora_scale": 1.0}}
    [record] = write_result(
        GenerationResult(copied, [Image.new("RGB", (192, 128))], [5]), run_dir, info, stem="image"
    )
    page.get_by_text("Load or save a request", exact=True).click()
    page.locator("#load_request input[type=file]").set_input_files(record["sidecar"])
    page.locator("#load_status").get_by_text("Loaded").wait_for(timeout=60_000)

    def restored():
        assert field(page, "prompt").input_value() == "two pets"
        phrases = [field(page, f"s{k}-phrase").input_value() for k in range(3)]
        assert phrases == ["dog", "cat", "hat"]
        assert page.locator("#subject-2").is_visible()  # the third slot opened for it
        assert not page.locator("#subject-3").is_visible()
        assert field(page, "s1-box").input_value() == "0.5, 0.1, 0.9, 0.8"
        assert field(page, "s1-scale").input_value() == "0.9"
        assert (field(page, "width").input_value(), field(page, "height").input_value()) == (
            "192",
            "128",
        )
        assert not field(page, "random_seed").is_checked()  # its seed, to make it again
        assert field(page, "seed").input_value() == "5"
        assert page.locator("#s1-images img").count() >= 1
        labels = page.locator("#layout-canvas .msd-box .msd-label").all_inner_texts()
        assert labels == ["1. dog", "2. cat", "3. hat"]
        style = page.locator("#layout-canvas .msd-frame").get_attribute("style")
        assert "192 / 128" in style

    eventually(restored)
    page.get_by_text("Generation settings", exact=True).click()
    eventually(lambda: assert_equal(field(page, "lora").input_value(), "none"))  # it used no LoRA


def test_drawing_always_edits_the_highlighted_subject(page):
    def drag(start, end, steps=5):
        canvas_drag(page, start, end, steps=steps)

    def box_is(k, expected, abs=2e-3, part=slice(0, 4)):
        def check():
            box = box_of(page, k)
            assert box, f"subject {k + 1} has no box yet"
            assert box[part] == pytest.approx(expected, abs=abs)

        eventually(check)

    drag((0.05, 0.1), (0.45, 0.9))  # subject 1, the README's side-by-side layout
    box_is(0, [0.05, 0.1, 0.45, 0.9])
    chips = page.locator("#layout-canvas .msd-chip")
    assert "on" in chips.nth(1).get_attribute("class")  # drawing moved on to subject 2
    # with subject 2 highlighted, a drag that starts inside box 1, next to its edge, and one
    # over its corner handle draw box 2 — box 1 stays as it is
    drag((0.44, 0.5), (0.95, 0.85))
    box_is(1, [0.44, 0.5, 0.95, 0.85])
    chips.nth(1).click()
    drag((0.45, 0.9), (0.6, 0.3))  # from box 1's corner: box 2 again, normalised
    box_is(1, [0.45, 0.3, 0.6, 0.9])
    box_is(0, [0.05, 0.1, 0.45, 0.9])
    # a click on box 1 highlights subject 1; then dragging inside it moves it
    frame = page.locator("#layout-canvas .msd-frame")
    rect = frame.bounding_box()
    page.mouse.click(rect["x"] + 0.2 * rect["width"], rect["y"] + 0.5 * rect["height"])
    eventually(lambda: assert_equal("on" in chips.nth(0).get_attribute("class"), True))
    drag((0.2, 0.5), (0.25, 0.45))
    box_is(0, [0.1, 0.05, 0.5, 0.85])
    box_is(1, [0.45, 0.3, 0.6, 0.9])
    # a corner pulled past the opposite edge flips the box; onto it, the box keeps a minimum size
    corner = page.locator('#layout-canvas .msd-box[data-k="0"] .msd-handle[data-corner="se"]')
    c = corner.bounding_box()
    rect = frame.bounding_box()
    page.mouse.move(c["x"] + c["width"] / 2, c["y"] + c["height"] / 2)
    page.mouse.down()
    page.mouse.move(rect["x"] + 0.02 * rect["width"], rect["y"] + 0.02 * rect["height"], steps=6)
    page.mouse.up()
    box_is(0, [0.02, 0.02, 0.1, 0.05], abs=0.01)
    corner = page.locator('#layout-canvas .msd-box[data-k="0"] .msd-handle[data-corner="nw"]')
    c = corner.bounding_box()
    page.mouse.move(c["x"] + c["width"] / 2, c["y"] + c["height"] / 2)
    page.mouse.down()
    page.mouse.move(rect["x"] + 0.1 * rect["width"], rect["y"] + 0.05 * rect["height"], steps=6)
    page.mouse.up()  # dragged exactly onto the opposite corner: never a zero-size box
    box = box_of(page, 0)
    assert box[2] == pytest.approx(0.1, abs=0.005)  # the fixed corner stayed
    assert box[2] - box[0] >= 0.0199 and box[3] - box[1] >= 0.0199
    drag((0.7, 0.1), (0.7, 0.1), steps=1)  # a click on empty canvas changes no box
    box = box_of(page, 0)
    assert box[2] - box[0] >= 0.0199 and box[3] - box[1] >= 0.0199
    # typed numbers move the box on the canvas; Delete removes the highlighted subject's box
    field(page, "s0-box").fill("0.05, 0.1, 0.5, 0.6")
    field(page, "s0-box").press("Enter")

    def moved():
        style = page.locator('#layout-canvas .msd-box[data-k="0"]').get_attribute("style")
        assert "left: 5%" in style and "width: 45%" in style

    eventually(moved)
    page.locator('#layout-canvas .msd-box[data-k="0"]').click()
    page.keyboard.press("Delete")
    page.locator('#layout-canvas .msd-box[data-k="0"]').wait_for(state="detached", timeout=15_000)
    eventually(lambda: assert_equal(field(page, "s0-box").input_value(), ""))
    box_is(1, [0.45, 0.3, 0.6, 0.9])


def test_subjects_are_added_cleared_and_removed(page, tmp_path):
    dog, cat = reference_images(tmp_path)
    assert [page.locator(f"#subject-{k}").is_visible() for k in range(3)] == [True, True, False]
    for _ in range(2):
        page.locator("#add-subject").click()
    eventually(lambda: assert_equal(page.locator("#subject-3").is_visible(), True))
    chips = page.locator("#layout-canvas .msd-chip")
    eventually(lambda: assert_equal(chips.count(), 4))
    # four subjects open at 1280×720: Generate, the start of the results and the canvas in view
    page.evaluate("window.scrollTo(0, 0)")
    assert on_screen(page, "generate") and on_screen(page, "results", whole=False)
    assert on_screen(page, "layout-canvas", whole=False)
    page.screenshot(path=str(tmp_path / "four-subjects.png"))
    for k, (image, phrase) in enumerate(((dog, "dog"), (cat, "cat"), (dog, "hat"))):
        page.locator(f"#s{k}-images input[type=file]").set_input_files(str(image))
        field(page, f"s{k}-phrase").fill(phrase)
        type_into(page, f"s{k}-box", f"{0.3 * k}, 0, {0.3 * k + 0.3}, 1")
    eventually(lambda: assert_equal(page.locator("#layout-canvas .msd-box").count(), 3))
    # more than four: up to eight slots
    for _ in range(4):
        page.locator("#add-subject").click()
    eventually(lambda: assert_equal(page.locator("#subject-7").is_visible(), True))
    assert not page.locator("#add-subject").is_visible()
    eventually(lambda: assert_equal(chips.count(), 8))
    # Remove takes a subject out: the ones after it move up
    page.locator("#s0-remove").click()

    def removed():
        assert [field(page, f"s{k}-phrase").input_value() for k in range(3)] == ["cat", "hat", ""]
        assert field(page, "s0-box").input_value() == "0.3, 0, 0.6, 1"
        assert page.locator("#s0-images img").count() >= 1
        labels = page.locator("#layout-canvas .msd-box .msd-label").all_inner_texts()
        assert labels == ["1. cat", "2. hat"]
        assert not page.locator("#subject-7").is_visible()
        assert page.locator("#add-subject").is_visible()

    eventually(removed)
    # Clear empties a subject where it is
    page.locator("#s0-clear").click()

    def cleared():
        assert [field(page, f"s{k}-phrase").input_value() for k in range(2)] == ["", "hat"]
        assert field(page, "s0-box").input_value() == ""
        assert page.locator("#s0-images img").count() == 0
        labels = page.locator("#layout-canvas .msd-box .msd-label").all_inner_texts()
        assert labels == ["2. hat"]

    eventually(cleared)


def test_a_picture_is_the_canvas_background_and_its_boxes_are_repainted(page, server, tmp_path):
    _, out_dir, _, _ = server
    dog, _ = reference_images(tmp_path)
    # a single reference is shown whole, as a thumbnail (not widened and cut at the slot's height)
    page.locator("#s0-images input[type=file]").set_input_files(str(dog))
    page.locator("#s0-images img").first.wait_for(timeout=10_000)
    eventually(lambda: assert_equal(whole_in_view(page, "#s0-images img"), []))
    rng = np.random.default_rng(0)
    garden = tmp_path / "garden.png"
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(garden)
    page.get_by_text("Start from a picture (optional)").click()
    page.locator("#init_image input[type=file]").set_input_files(str(garden))
    # the output takes the picture's aspect ratio at the model's size; the canvas shows it
    eventually(
        lambda: assert_equal(
            (field(page, "width").input_value(), field(page, "height").input_value()),
            ("312", "208"),
        )
    )
    frame = page.locator("#layout-canvas .msd-frame")

    def shown_under_the_boxes():
        style = frame.get_attribute("style") or ""
        assert "/gradio_api/file=" in style, style
        rect = frame.bounding_box()
        assert abs(rect["width"] / rect["height"] - 312 / 208) < 0.02, rect

    eventually(shown_under_the_boxes)
    url = re.search(r"url\('([^']+)'\)", frame.get_attribute("style")).group(1)
    served = page.request.get(server[0].rstrip("/") + url)
    assert served.ok and served.body()[:8] == b"\x89PNG\r\n\x1a\n"  # the browser may fetch it
    field(page, "prompt").fill("a dog in the garden")
    field(page, "s0-phrase").fill("dog")
    set_steps(page, 2)
    page.locator("#repaint input[value=boxes]").check()
    checked = "() => document.querySelector('#repaint input:checked').value"
    eventually(lambda: assert_equal(page.evaluate(checked), "boxes"))
    eventually(
        lambda: assert_equal(page.locator("#strength input[type=number]").input_value(), "1")
    )
    canvas_drag(page, (0.55, 0.2), (0.95, 0.9))
    eventually(lambda: assert_equal(box_of(page, 0) is not None, True))
    runs = len(list(out_dir.glob("*/image_0.json"))) if out_dir.exists() else 0
    page.locator("#generate").click()
    done = lambda: assert_equal(len(list(out_dir.glob("*/image_0.json"))), runs + 1)  # noqa: E731
    eventually(done, timeout=120)
    sidecar = sorted(out_dir.glob("*/image_0.json"))[-1]
    recipe = json.loads(sidecar.read_text())["request"]
    assert (recipe["width"], recipe["height"], recipe["strength"]) == (312, 208, 1.0)
    for name in ("init_image", "inpaint_mask"):
        assert (sidecar.parent / recipe[name]).is_file(), recipe[name]  # kept with the result
    mask = np.asarray(Image.open(sidecar.parent / recipe["inpaint_mask"])) > 0
    x0, y0, x1, y1 = recipe["subjects"][0]["box"]
    assert mask.shape == (208, 312) and mask[int(y0 * 208) + 1, int(x0 * 312) + 1]
    assert not mask[:, : int(x0 * 312) - 1].any()  # only the box is repainted
    # outside the box the result is the picture itself, pixel for pixel
    result = np.asarray(Image.open(sidecar.parent / "image_0.png"), dtype=int)
    source = np.asarray(Image.open(garden).resize((312, 208), Image.Resampling.LANCZOS), dtype=int)
    assert np.array_equal(result[~mask], source[~mask])
    page.locator("#results img").first.wait_for(timeout=10_000)
    eventually(lambda: assert_equal(whole_in_view(page, "#results img"), []))
    # its sidecar restores the picture, the mask (now an uploaded one) and the strength
    page.get_by_text("Load or save a request", exact=True).click()
    page.locator("#load_request input[type=file]").set_input_files(str(sidecar))
    page.locator("#load_status").get_by_text("Loaded").wait_for(timeout=60_000)

    def restored():
        assert page.evaluate(checked) == "mask"
        assert page.locator("#strength input[type=number]").input_value() == "1"
        assert page.locator("#inpaint_mask img").count() == 1
        style = frame.get_attribute("style") or ""
        url = re.search(r"url\('([^']+)'\)", style).group(1)
        assert page.request.get(server[0].rstrip("/") + url).ok, url

    eventually(restored)
