"""The Gradio page: compose subjects, draw their boxes, generate, keep the recipe.

A thin layer over :mod:`msdiffusion.inference` — the page's fields become a
``GenerationRequest`` (:mod:`.handlers`), ``generate`` runs it with a progress bar, ``write_result``
writes each image with its layout overlay and JSON sidecar (the CLI's format). One generation runs
at a time; the queue is bounded; uploads are limited in size and type.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

# Before gradio is imported: no telemetry, no version check.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from ..errors import MSDiffusionError  # noqa: E402
from . import canvas as cv  # noqa: E402
from .handlers import (  # noqa: E402
    EXAMPLE_LAYOUTS,
    FORM_FIELDS,
    MAX_SUBJECTS,
    Form,
    FormErrors,
    apply_layout,
    build_request,
    canvas_for,
    copy_files,
    find_own_sidecar,
    form_from_request,
    form_from_values,
    form_to_values,
    pick_seed,
    validate_form,
)

__all__ = ["build_app", "launch"]

# System fonts only: the page loads nothing from outside the server.
THEME_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]
PLACEHOLDERS = ("dog", "cat", "hat", "mountain")  # phrase examples, one per subject slot
CSS = """
.msd-subject { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px; }
"""


def _new_run_dir(out_root: Path) -> Path:
    run_dir = out_root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def _with_copied_files(form: Form, run_dir: Path) -> Form:
    """The form with its reference images and masks copied into ``run_dir/references`` — the
    sidecar's recipe then points at files kept with the results, not at the upload cache."""
    subjects = []
    for k, subject in enumerate(form.subjects):
        if subject.is_empty():
            subjects.append(subject)
            continue
        refs = run_dir / "references"
        images = copy_files(subject.images, refs / f"s{k}")
        mask = copy_files([subject.mask], refs / f"s{k}_mask")[0] if subject.mask else None
        subjects.append(replace(subject, images=images, mask=mask))
    return replace(form, subjects=subjects)


def build_app(model: Any, *, out_dir: str | Path = "outputs/ui") -> gr.Blocks:
    """The page for ``model`` (a :class:`msdiffusion.loading.LoadedModel`); results go to
    ``out_dir/<time>-<id>/``."""
    from ..inference import generate, write_result
    from ..request import read_requests

    out_root = Path(out_dir).resolve()
    size = int(model.default_size)
    tokenizer = model.pipe.tokenizer  # for the pipeline's layout rules, checked up front
    start = Form(width=size, height=size)
    w: dict[str, Any] = {}  # form field key → widget

    # Uploads and served copies older than a day are deleted, checked hourly.
    with gr.Blocks(
        title="MS-Diffusion", analytics_enabled=False, delete_cache=(3600, 86400)
    ) as demo:
        info = model.info or {}
        gr.Markdown(
            "## MS-Diffusion — multi-subject, layout-guided generation\n"
            f"Model: **{info.get('preset', '?')}** · device {info.get('device', '?')} · "
            f"{info.get('dtype', '?')}. Add a reference image and a phrase per subject, draw each "
            "subject's box on the canvas (or type it), then Generate."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                w["prompt"] = gr.Textbox(
                    label="Prompt",
                    lines=2,
                    elem_id="prompt",
                    placeholder="a dog and a cat on the beach",
                )
                w["negative_prompt"] = gr.Textbox(
                    label="Negative prompt", lines=1, elem_id="negative_prompt"
                )
                for row in range(0, MAX_SUBJECTS, 2):
                    with gr.Row(equal_height=False):
                        for k in (row, row + 1):
                            _subject_widgets(w, k)
            with gr.Column(scale=6):
                canvas = cv.layout_canvas(
                    canvas_for(start), elem_id="layout-canvas", label="Layout"
                )
                with gr.Row():
                    layout_buttons = [
                        gr.Button(
                            layout.title, size="sm", variant="secondary", elem_id=f"layout-{i}"
                        )
                        for i, layout in enumerate(EXAMPLE_LAYOUTS)
                    ]
                with gr.Row():
                    w["width"] = gr.Number(
                        label="Width",
                        value=size,
                        precision=0,
                        step=8,
                        minimum=64,
                        maximum=4096,
                        elem_id="width",
                    )
                    w["height"] = gr.Number(
                        label="Height",
                        value=size,
                        precision=0,
                        step=8,
                        minimum=64,
                        maximum=4096,
                        elem_id="height",
                    )
                    w["num_images"] = gr.Number(
                        label="Images",
                        value=1,
                        precision=0,
                        minimum=1,
                        maximum=8,
                        elem_id="num_images",
                    )
                with gr.Row():
                    w["seed"] = gr.Number(
                        label="Seed", value=0, precision=0, minimum=0, elem_id="seed"
                    )
                    w["random_seed"] = gr.Checkbox(
                        label="random seed", value=False, elem_id="random_seed"
                    )
                with gr.Accordion("Generation settings", open=False, elem_id="settings"):
                    w["steps"] = gr.Slider(1, 150, value=30, step=1, label="Steps", elem_id="steps")
                    w["guidance"] = gr.Slider(
                        0.0, 20.0, value=7.5, step=0.1, label="Guidance scale", elem_id="guidance"
                    )
                    w["scale"] = gr.Slider(
                        0.0,
                        2.0,
                        value=0.6,
                        step=0.05,
                        label="Subject scale (image attention)",
                        elem_id="scale",
                    )
                    w["auto_layout"] = gr.Checkbox(
                        label="Auto layout (refine the boxes from attention maps)",
                        value=False,
                        elem_id="auto_layout",
                    )
                    with gr.Row():
                        w["mask_threshold"] = gr.Slider(
                            0.0,
                            0.95,
                            value=0.5,
                            step=0.05,
                            label="Mask threshold",
                            elem_id="mask_threshold",
                        )
                        w["start_step"] = gr.Number(
                            label="Start step",
                            value=5,
                            precision=0,
                            minimum=0,
                            elem_id="start_step",
                        )
                    w["drop_grounding"] = gr.Checkbox(
                        label="Drop grounding tokens (ignore boxes and phrases in the resampler)",
                        value=False,
                        elem_id="drop_grounding",
                    )
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="status")
                results = gr.Gallery(
                    label="Results (image, layout overlay)",
                    columns=2,
                    height="auto",
                    interactive=False,
                    format="png",
                    elem_id="results",
                )
                sidecars = gr.File(
                    label="JSON sidecars (one per image: the exact recipe)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="sidecars",
                )
                with gr.Accordion("Load or save a request", open=False, elem_id="load-save"):
                    load_file = gr.File(
                        label="Load a request JSON or a sidecar",
                        file_types=[".json"],
                        file_count="single",
                        elem_id="load_request",
                    )
                    load_status = gr.Markdown(elem_id="load_status")
                    save_button = gr.Button(
                        "Save this request as JSON", size="sm", elem_id="save_request"
                    )
                    saved = gr.File(
                        label="Request JSON", interactive=False, elem_id="saved_request"
                    )

        inputs = [w[key] for key in FORM_FIELDS]
        box_fields = [w[f"s{k}.box"] for k in range(MAX_SUBJECTS)]
        phrase_fields = [w[f"s{k}.phrase"] for k in range(MAX_SUBJECTS)]

        # Canvas ↔ box fields ↔ phrases, in the browser (no round trip).
        canvas.input(fn=None, js=cv.JS_CANVAS_TO_BOXES, inputs=canvas, outputs=box_fields)
        for k in range(MAX_SUBJECTS):
            for event in (box_fields[k].blur, box_fields[k].submit):
                event(
                    fn=None,
                    js=cv.js_box_to_canvas(k),
                    inputs=[box_fields[k], canvas],
                    outputs=canvas,
                )
            phrase_fields[k].change(
                fn=None,
                js=cv.js_label_to_canvas(k),
                inputs=[phrase_fields[k], canvas],
                outputs=canvas,
            )
        for size_field in (w["width"], w["height"]):
            size_field.change(
                fn=None,
                js=cv.JS_SIZE_TO_CANVAS,
                inputs=[w["width"], w["height"], canvas],
                outputs=canvas,
            )

        def validator(*values: Any) -> list[dict[str, Any]]:
            errors = validate_form(form_from_values(values), tokenizer=tokenizer)
            return [gr.validate(key not in errors, errors.get(key, "")) for key in FORM_FIELDS]

        def run(*values: Any, progress: gr.Progress = gr.Progress()):  # noqa: B008 (gradio's API)
            form = form_from_values(values)
            seed = pick_seed(form)
            try:
                build_request(form, seed=seed, tokenizer=tokenizer)  # before copying anything
                run_dir = _new_run_dir(out_root)
                request = build_request(_with_copied_files(form, run_dir), seed=seed)
                progress(0.0, desc="encoding subjects")
                [result] = generate(
                    model,
                    [request],
                    progress=False,
                    on_step=lambda done, total: progress((done, total), desc="denoising"),
                )
                records = write_result(result, run_dir, model.info, stem="image")
            except MSDiffusionError as err:  # FormErrors and InputError included: one line
                raise gr.Error(str(err), print_exception=False) from None
            gallery = []
            for record, image_seed in zip(records, result.seeds, strict=True):
                gallery.append((record["image"], f"seed {image_seed}"))
                gallery.append((record["overlay"], f"seed {image_seed} · layout"))
            where = Path(out_dir) / run_dir.name
            message = (
                f"{len(records)} image(s), seed {seed}, in `{where}`. "
                "Each sidecar below restores this page (Load or save a request)."
            )
            return gallery, [r["sidecar"] for r in records], seed, message

        generate_button.click(
            run,
            inputs=inputs,
            outputs=[results, sidecars, w["seed"], status],
            validator=validator,
            concurrency_limit=1,
            concurrency_id="generate",
            show_progress="full",
        )

        def save(*values: Any) -> str:
            form = form_from_values(values)
            try:
                request = build_request(form, seed=pick_seed(form))
            except MSDiffusionError as err:
                raise gr.Error(str(err), print_exception=False) from None
            path = Path(tempfile.mkdtemp(prefix="msdiffusion-ui-")) / "request.json"
            path.write_text(json.dumps(request.to_dict(), indent=2))
            return str(path)

        save_button.click(save, inputs=inputs, outputs=saved, validator=validator)

        form_outputs = inputs + [canvas]

        def load(path: str | None):
            if not path:
                return [gr.skip()] * len(form_outputs) + [""]
            try:
                requests = read_requests(find_own_sidecar(path, out_root))
                if not requests:
                    raise FormErrors({"request": "the file holds no request"})
                form = form_from_request(requests[0], default_size=size)
            except MSDiffusionError as err:
                return [gr.skip()] * len(form_outputs) + [f"**Could not load:** {err}"]
            note = f"Loaded request 1 of {len(requests)}." if len(requests) > 1 else "Loaded."
            return form_to_values(form) + [canvas_for(form), note]

        load_file.upload(load, inputs=load_file, outputs=form_outputs + [load_status])

        layout_outputs = [w["prompt"], *phrase_fields, *box_fields, canvas]
        for button, layout in zip(layout_buttons, EXAMPLE_LAYOUTS, strict=True):

            def use_layout(*values: Any, layout=layout):
                form = apply_layout(form_from_values(values), layout)
                return (
                    [form.prompt]
                    + [s.phrase for s in form.subjects]
                    + [s.box for s in form.subjects]
                    + [canvas_for(form)]
                )

            button.click(use_layout, inputs=inputs, outputs=layout_outputs)
    return demo


def _subject_widgets(w: dict[str, Any], k: int) -> None:
    """Subject slot ``k``: references, phrase, box, scale, mask."""
    color = cv.COLORS[k]
    with gr.Column(min_width=260, elem_classes="msd-subject", elem_id=f"subject-{k}"):
        gr.HTML(f"<b style='color:{color}'>Subject {k + 1}</b>", js_on_load=None)
        w[f"s{k}.images"] = gr.Gallery(
            label="Reference image(s)",
            type="filepath",
            file_types=["image"],
            interactive=True,
            columns=3,
            height=150,
            format="png",
            object_fit="contain",
            elem_id=f"s{k}-images",
        )
        w[f"s{k}.phrase"] = gr.Textbox(
            label="Phrase", placeholder=PLACEHOLDERS[k], max_lines=1, elem_id=f"s{k}-phrase"
        )
        w[f"s{k}.box"] = gr.Textbox(
            label="Box x0, y0, x1, y1 (0–1; or draw it)", max_lines=1, elem_id=f"s{k}-box"
        )
        with gr.Row():
            w[f"s{k}.scale"] = gr.Textbox(
                label="Scale (empty: the global one)",
                max_lines=1,
                placeholder="0.6",
                elem_id=f"s{k}-scale",
            )
            w[f"s{k}.mask"] = gr.Image(
                label="Mask (optional)",
                type="filepath",
                sources=["upload", "clipboard"],
                height=110,
                elem_id=f"s{k}-mask",
            )


def launch(
    model: Any,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    share: bool = False,
    out_dir: str | Path = "outputs/ui",
    max_file_size: str = "20mb",
    max_queue: int = 8,
    block: bool = True,
) -> gr.Blocks:
    """Builds the page and serves it: one generation at a time, at most ``max_queue`` waiting."""
    demo = build_app(model, out_dir=out_dir)
    demo.queue(default_concurrency_limit=1, max_size=max_queue)
    out_root = Path(out_dir).resolve()
    out_root.mkdir(parents=True, exist_ok=True)
    theme = gr.themes.Default(font=THEME_FONTS, font_mono=MONO_FONTS)
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=max_file_size,
        allowed_paths=[str(out_root)],
        prevent_thread_lock=True,
        show_error=False,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        run_history=False,
        enable_monitoring=False,
        footer_links=["api", "settings"],
        theme=theme,
        css=CSS,
        quiet=True,
    )
    if block:
        print(
            f"msdiffusion ui: serving {demo.local_url}"
            + (f" and {demo.share_url}" if share and demo.share_url else "")
            + f" · results in {out_dir} · Ctrl+C to stop",
            flush=True,
        )
        demo.block_thread()
    return demo
