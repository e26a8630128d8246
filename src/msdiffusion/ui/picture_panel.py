"""The page's *Start from a picture* panel: the picture (shown under the boxes on the canvas), what
to repaint, the strength, and a mask to upload (see :mod:`.picture`)."""

from __future__ import annotations

import json
from typing import Any

import gradio as gr

from .picture import DEFAULT_STRENGTH, REPAINT_CHOICES, fit_size, picture_size

__all__ = ["picture_panel", "wire_picture"]


def picture_panel(w: dict[str, Any]) -> None:
    """The panel's widgets, put into ``w`` under ``init_image``, ``repaint``, ``strength`` and
    ``inpaint_mask``."""
    with gr.Accordion("Start from a picture (optional)", open=False, elem_id="picture"):
        with gr.Row():
            for key, label in (
                ("init_image", "Picture (the boxes are drawn on it)"),
                ("inpaint_mask", "Repaint mask (white = repaint)"),
            ):
                w[key] = gr.Image(
                    label=label,
                    type="filepath",
                    sources=["upload", "clipboard"],
                    height=140,
                    elem_id=key,
                )
        w["repaint"] = gr.Radio(
            [(label, value) for label, value in REPAINT_CHOICES],
            value="whole",
            label="Repaint",
            elem_id="repaint",
        )
        w["strength"] = gr.Slider(
            0.0,
            1.0,
            value=DEFAULT_STRENGTH["whole"],
            step=0.05,
            label="Strength (0: the picture as it is, 1: all new)",
            elem_id="strength",
        )


def wire_picture(w: dict[str, Any], default_size: int, after: dict[str, Any]) -> None:
    """A new picture sets the output size to its aspect ratio at the model's native area (the
    canvas is then drawn again from the fields: ``after``); a new *Repaint* choice sets its
    usual strength."""

    def use_picture(path: str | None) -> list[Any]:
        size = picture_size(path)
        if size is None:
            return [gr.skip(), gr.skip()]
        width, height = fit_size(size, default_size)
        return [width, height]

    w["init_image"].change(
        use_picture,
        inputs=w["init_image"],
        outputs=[w["width"], w["height"]],
        show_progress="hidden",
        queue=False,
    ).then(**after)
    strengths = json.dumps(DEFAULT_STRENGTH)
    w["repaint"].change(  # in the browser: it holds whatever else the page is checking
        fn=None,
        js=f"(choice, now) => ({strengths})[choice] ?? now",
        inputs=[w["repaint"], w["strength"]],
        outputs=w["strength"],
    )
