"""What the browser tests do on the page and how they look at it: fields by element id, canvas
drags, on-screen and whole-image checks, and waiting for a page that updates asynchronously."""

from __future__ import annotations

import re
import time

VIEWPORT = {"width": 1280, "height": 720}  # a laptop screen: everything needed must fit


def field(page, elem_id: str):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input:not([type=file])").first


def type_into(page, elem_id: str, text: str) -> None:
    """Types into a field (the page checks it as it is typed in) and leaves it."""
    field(page, elem_id).fill(text)
    field(page, elem_id).press("Tab")


def choose(page, elem_id: str, option: str) -> None:
    """Picks the dropdown option whose label starts with ``option``."""
    field(page, elem_id).click()
    page.get_by_role("option", name=re.compile("^" + re.escape(option))).first.click()


def set_steps(page, steps: int) -> None:
    if not page.locator("#steps input[type=number]").is_visible():
        page.get_by_text("Generation settings", exact=True).click()
    box = page.locator("#steps input[type=number]")

    def applied():
        if box.input_value() != str(steps):
            box.fill(str(steps))
            box.press("Enter")
        assert page.locator("#steps input[type=range]").input_value() == str(steps)

    eventually(applied)


def canvas_drag(page, start, end, steps: int = 5) -> None:
    """A mouse drag on the layout canvas, in fractions of its width and height."""
    frame = page.locator("#layout-canvas .msd-frame")
    frame.scroll_into_view_if_needed()
    rect = frame.bounding_box()
    page.mouse.move(rect["x"] + start[0] * rect["width"], rect["y"] + start[1] * rect["height"])
    page.mouse.down()
    page.mouse.move(
        rect["x"] + end[0] * rect["width"], rect["y"] + end[1] * rect["height"], steps=steps
    )
    page.mouse.up()


def box_of(page, k: int) -> list[float] | None:
    text = field(page, f"s{k}-box").input_value()
    return [float(v) for v in text.split(",")] if text else None


def on_screen(page, elem_id: str, *, whole: bool = True) -> bool:
    """Whether the element is inside the window without scrolling (``whole``: all of it; else its
    top 100 px)."""
    rect = page.locator(f"#{elem_id}").bounding_box()
    bottom = rect["y"] + (rect["height"] if whole else min(100, rect["height"]))
    return (
        rect["x"] >= 0
        and rect["y"] >= 0
        and rect["x"] + rect["width"] <= VIEWPORT["width"]
        and (bottom <= VIEWPORT["height"])
    )


def count_progress_bars(page) -> None:
    """From now on, the page records the most progress bars it ever showed at once."""
    page.evaluate(
        """() => {
        window.msdMostBars = 0;
        const count = () => { window.msdMostBars = Math.max(window.msdMostBars,
            document.querySelectorAll('.progress-level').length); };
        new MutationObserver(count).observe(document.body, {subtree: true, childList: true});
    }"""
    )


def eventually(check, timeout: float = 30.0):
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


def assert_equal(got, want):
    assert got == want, (got, want)


def whole_in_view(page, selector: str) -> list[str]:
    """For each image under ``selector``: where it is cut off by a box around it that clips
    (``overflow`` not visible), as text; an empty list when every image is shown whole."""
    return page.evaluate(
        """(selector) => {
        const cut = [];
        for (const img of document.querySelectorAll(selector)) {
          const r = img.getBoundingClientRect();
          if (r.width < 8 || r.height < 8) { cut.push(`${img.src}: ${r.width}×${r.height}`); }
          for (let el = img.parentElement; el; el = el.parentElement) {
            const cs = getComputedStyle(el);
            if (cs.overflow === 'visible' && cs.overflowY === 'visible') continue;
            const b = el.getBoundingClientRect();
            if (r.top < b.top - 1 || r.bottom > b.bottom + 1 || r.left < b.left - 1
                || r.right > b.right + 1) {
              cut.push(`${el.className}: image ${Math.round(r.top)}–${Math.round(r.bottom)}, `
                       + `box ${Math.round(b.top)}–${Math.round(b.bottom)}`);
              break;
            }
          }
        }
        return cut;
    }""",
        selector,
    )
