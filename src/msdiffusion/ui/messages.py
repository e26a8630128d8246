"""What the page says under a field that is wrong: the request's rules in plain words.

The page uses the same validation as the command line and request files (``InputError`` with a
location and a rule); a form field shows the rule rephrased for someone who drew a box rather
than typed a tuple. Rules not listed here are shown as they are, capitalised.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["plain", "is_incomplete", "INCOMPLETE"]

# Rules that mean "not filled in yet" rather than "wrong": the page says them on Generate, not
# while the artist is still filling in the form.
INCOMPLETE = (
    "add a reference image",
    "must be a non-empty string",
    "needs a box or a mask",
    "is required",
)


def is_incomplete(message: str) -> bool:
    return any(rule in message for rule in INCOMPLETE) or message.startswith(
        (
            "Describe the picture",
            "Name the subject",
            "Draw this subject",
            "Add a reference",
            "Draw a subject's box first",
            "Add a mask",
        )
    )


def _number(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return repr(value)
    return f"{number:g}"


def plain(key: str, rule: str, value: Any = None) -> str:
    """The message for form field ``key`` whose value broke ``rule``."""
    attribute = key.split(".")[-1]
    if attribute == "box":
        if "four numbers" in rule:
            return "Four numbers from 0 to 1 (left, top, right, bottom), or draw the box."
        if "[0, 1]" in rule:
            return "Each number is a fraction of the picture: between 0 and 1."
        if "x0 < x1" in rule:
            return "The left edge must be left of the right edge, and the top above the bottom."
        if "needs a box or a mask" in rule:
            return "Draw this subject's box on the canvas (or give a mask, or use auto layout)."
        if "inside the repaint area" in rule:
            return (
                "Keep this box inside the part that is repainted (the mask's white), or repaint "
                "only inside the boxes."
            )
    if attribute == "phrase":
        if "non-empty" in rule:
            return "Name the subject as the prompt does, e.g. “dog”."
        if "must appear in the prompt" in rule:
            return "Auto layout needs this word in the prompt, written the same way."
    if attribute in ("images", "mask", "init_image", "inpaint_mask"):
        if "add a reference image" in rule:
            return "Add a reference image (or clear this subject)."
        if "DecompressionBombError" in rule:
            return "This image has too many pixels to open safely; use a smaller copy."
        if "not a readable image" in rule:
            return "This file is not an image the page can open."
        if "is a folder" in rule:
            return "This is a folder, not an image."
        if "does not exist" in rule:
            return "This file is gone; upload it again."
        if "aspect ratio" in rule:
            size = re.search(r"width x height (\d+)x(\d+)", rule)
            shape = f" ({size.group(1)} × {size.group(2)})" if size else ""
            return f"The mask must have the picture's shape{shape}; this one is {value}."
        if "is empty" in rule:
            return "The mask is black everywhere: paint the region white."
    if key == "prompt" and "non-empty" in rule:
        return "Describe the picture first."
    if key in ("width", "height") and "multiple of" in rule:
        multiple = re.search(r"multiple of (\d+)", rule)
        step = multiple.group(1) if multiple else "8"
        return f"Use a multiple of {step} pixels (e.g. 1024, 768, 512); this is {_number(value)}."
    if attribute == "scale" and (">= 0" in rule or "must be a number" in rule):
        return "A number of 0 or more (empty: the global scale)."
    if rule in ("must be a number", "must be a finite number"):
        return f"Type a number here (not {value!r})."
    bounds = re.search(
        r"must be (?:an integer|a number|a finite number) >= ([\d.]+)(?: and (<=?) ([\d.e+]+))?",
        rule,
    )
    if bounds:
        low, op, high = bounds.groups()
        if high is None:
            return f"Use {_number(low)} or more."
        above = "up to" if op == "<=" else "below"
        return f"Use a value from {_number(low)} {above} {_number(high)}."
    return rule[:1].upper() + rule[1:]
