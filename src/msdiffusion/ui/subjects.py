"""One subject slot on the page: reference images, phrase, box, scale, mask, and its buttons.

The page has :data:`~.handlers.MAX_SUBJECTS` slots; the first ones are open, *Add a subject* opens
the next, *Clear* empties a slot, *Remove* takes it out (the slots after it move up).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from . import canvas as cv

__all__ = ["subject_slot"]


def subject_slot(w: dict[str, Any], k: int, *, visible: bool) -> tuple[Any, Any, Any]:
    """Slot ``k``'s widgets, put into ``w`` under ``s{k}.images`` … ``s{k}.mask``; returns the
    slot's column and its *Clear* and *Remove* buttons."""
    color = cv.COLORS[k]
    with gr.Column(
        min_width=260, elem_classes="msd-subject", elem_id=f"subject-{k}", visible=visible
    ) as column:
        with gr.Row(equal_height=True):
            gr.HTML(
                f"<b style='color:{color}'>Subject {k + 1}</b>",
                elem_classes="msd-slot-title",
                padding=False,
            )
            clear = gr.Button(
                "Clear",
                size="sm",
                variant="secondary",
                min_width=60,
                scale=0,
                elem_id=f"s{k}-clear",
            )
            remove = gr.Button(
                "Remove",
                size="sm",
                variant="secondary",
                min_width=60,
                scale=0,
                elem_id=f"s{k}-remove",
            )
        w[f"s{k}.images"] = gr.Gallery(
            label="Reference image(s)",
            type="filepath",
            file_types=["image"],
            interactive=True,
            columns=4,
            height=120,
            format="png",
            object_fit="contain",  # the whole reference, never cropped
            allow_preview=False,
            elem_classes="msd-refs",
            elem_id=f"s{k}-images",
        )
        with gr.Row():
            w[f"s{k}.phrase"] = gr.Textbox(
                label="Phrase (the subject's word in the prompt)",
                placeholder="e.g. dog",
                max_lines=1,
                elem_id=f"s{k}-phrase",
            )
            w[f"s{k}.box"] = gr.Textbox(
                label="Box x0, y0, x1, y1 (0–1)",
                placeholder="draw it on the canvas",
                max_lines=1,
                elem_id=f"s{k}-box",
            )
        with gr.Row():
            w[f"s{k}.scale"] = gr.Textbox(
                label="Scale (optional)",
                max_lines=1,
                placeholder="empty: the global one",
                elem_id=f"s{k}-scale",
            )
            w[f"s{k}.mask"] = gr.Image(
                label="Mask (optional)",
                type="filepath",
                sources=["upload", "clipboard"],
                height=110,
                elem_id=f"s{k}-mask",
            )
    return column, clear, remove
