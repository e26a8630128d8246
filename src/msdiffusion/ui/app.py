"""The Gradio page: compose subjects, draw their boxes, generate, keep the recipe.

A thin layer over :mod:`msdiffusion.inference` — the page's fields become a
``GenerationRequest`` (:mod:`.handlers`), ``generate`` runs it with a progress bar, ``write_result``
writes each image with its layout overlay and JSON sidecar (the CLI's format) into a new numbered
run folder. One generation runs at a time; the queue is bounded; uploads are limited in size and
type. Three columns, so that at 1280×720 the prompt, the canvas, *Generate* and the results are all
on screen: the subjects (their list scrolls on its own), the layout canvas, then *Generate*, the
results and the settings.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

# Before gradio is imported: no telemetry, no version check.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from ..commands.model import use_lora  # noqa: E402
from ..commands.outputs import new_run_folder  # noqa: E402
from ..errors import MSDiffusionError  # noqa: E402
from ..pipelines.schedulers import SCHEDULERS  # noqa: E402
from . import canvas as cv  # noqa: E402
from .handlers import (  # noqa: E402
    FORM_FIELDS,
    MAX_SUBJECTS,
    SHOWN_SUBJECTS,
    Form,
    FormErrors,
    build_request,
    canvas_for,
    clear_slot,
    copy_files,
    find_own_sidecar,
    form_from_request,
    form_from_values,
    form_to_values,
    only_wrong,
    pick_seed,
    shift_out,
    shown_slots,
    validate_form,
)
from .layouts import EXAMPLE_LAYOUTS, apply_layout  # noqa: E402
from .loras import (  # noqa: E402
    info_with_lora,
    lora_choice,
    lora_errors,
    lora_from_sidecar,
    lora_labels,
)
from .picture_panel import picture_panel, wire_picture  # noqa: E402
from .subjects import subject_slot  # noqa: E402

__all__ = ["build_app", "launch"]

# System fonts only: the page loads nothing from outside the server.
THEME_FONTS = ["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "monospace"]
CSS = """
.msd-subject { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px; }
.msd-subjects { max-height: calc(100vh - 250px); overflow-y: auto; flex-wrap: nowrap; }
.msd-slot-title { flex-grow: 1; align-self: center; }
/* references as thumbnails, four to a row and whole, however few there are (the gallery would
   widen a single one to its full width, cut off at the gallery's height) */
.msd-refs .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important;
  grid-auto-rows: auto !important; }
.msd-refs .thumbnail-item { aspect-ratio: 1 / 1; height: auto; }
#results { min-height: 160px; }
"""


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
    pictures = {
        name: copy_files([path], run_dir / "references" / name)[0] if path else None
        for name, path in (("init_image", form.init_image), ("inpaint_mask", form.inpaint_mask))
    }
    return replace(form, subjects=subjects, **pictures)


def build_app(model: Any, *, out_dir: str | Path = "outputs/ui") -> gr.Blocks:
    """The page for ``model`` (a :class:`msdiffusion.loading.LoadedModel`); results go to a new
    numbered run folder ``out_dir/0001``, ``0002``, … per generation. The LoRAs the model was
    loaded with (``--lora``) are offered in a menu."""
    from ..inference import generate, persist_images, write_result
    from ..request import read_requests

    out_root = Path(out_dir).resolve()
    size = int(model.default_size)
    tokenizer = model.pipe.tokenizer  # for the pipeline's layout rules, checked up front
    info = model.info or {}
    loras = list((info.get("settings") or {}).get("lora") or [])
    start = Form(width=size, height=size, lora=loras[0] if loras else "")
    w: dict[str, Any] = {}  # form field key → widget

    # Uploads and served copies older than a day are deleted, checked hourly.
    with gr.Blocks(
        title="MS-Diffusion", analytics_enabled=False, delete_cache=(3600, 86400)
    ) as demo:
        gr.Markdown(
            f"**MS-Diffusion** · model **{info.get('preset', '?')}** · {info.get('device', '?')} · "
            f"{info.get('dtype', '?')} — add a reference image and a phrase per subject, draw "
            "each subject's box, then Generate."
        )
        shown = gr.State(SHOWN_SUBJECTS)  # how many subject slots are open
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                w["prompt"] = gr.Textbox(
                    label="Prompt",
                    lines=2,
                    elem_id="prompt",
                    placeholder="Describe the picture and name each subject in it",
                )
                w["negative_prompt"] = gr.Textbox(
                    label="Negative prompt (optional)",
                    lines=1,
                    elem_id="negative_prompt",
                    placeholder="What to keep out of the picture",
                )
                slots, clear_buttons, remove_buttons = [], [], []
                with gr.Column(elem_classes="msd-subjects", elem_id="subjects"):
                    for k in range(MAX_SUBJECTS):
                        slot, clear, remove = subject_slot(w, k, visible=k < SHOWN_SUBJECTS)
                        slots.append(slot)
                        clear_buttons.append(clear)
                        remove_buttons.append(remove)
                    add_button = gr.Button("+ Add a subject", size="sm", elem_id="add-subject")
            with gr.Column(scale=5, min_width=320):
                canvas = cv.layout_canvas(
                    canvas_for(start, count=SHOWN_SUBJECTS), elem_id="layout-canvas", label="Layout"
                )
                with gr.Row():
                    layout_buttons = [
                        gr.Button(
                            layout.title, size="sm", variant="secondary", elem_id=f"layout-{i}"
                        )
                        for i, layout in enumerate(EXAMPLE_LAYOUTS)
                    ]
                with gr.Row():
                    for key, label, value in (
                        ("width", "Width", size),
                        ("height", "Height", size),
                        ("num_images", "Images", 1),
                    ):
                        w[key] = gr.Number(
                            label=label,
                            value=value,
                            precision=0,
                            step=8 if key != "num_images" else 1,
                            minimum=64 if key != "num_images" else 1,
                            maximum=4096 if key != "num_images" else 8,
                            elem_id=key,
                        )
                picture_panel(w)
            with gr.Column(scale=4, min_width=300):
                generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
                status = gr.Markdown(elem_id="status")
                results = gr.Gallery(
                    label="Results (image, layout overlay)",
                    columns=2,
                    height=230,
                    object_fit="contain",
                    interactive=False,
                    format="png",
                    elem_id="results",
                )
                with gr.Row():
                    w["seed"] = gr.Number(
                        label="Seed (the one used last)",
                        value=0,
                        precision=0,
                        minimum=0,
                        elem_id="seed",
                    )
                    w["random_seed"] = gr.Checkbox(
                        label="New random seed each time (untick to reuse the seed shown)",
                        value=True,
                        elem_id="random_seed",
                    )
                sidecars = gr.File(
                    label="JSON sidecars (one per image: the exact recipe)",
                    file_count="multiple",
                    interactive=False,
                    height=90,
                    elem_id="sidecars",
                )
                _settings_widgets(w, loras, start)
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
        drawn = canvas.input(fn=None, js=cv.JS_CANVAS_TO_BOXES, inputs=canvas, outputs=box_fields)
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

        def field_messages(errors: dict[str, str]) -> list[dict[str, Any]]:
            return [gr.validate(key not in errors, errors.get(key, "")) for key in FORM_FIELDS]

        def validator(*values: Any) -> list[dict[str, Any]]:
            form = form_from_values(values)
            errors = validate_form(form, tokenizer=tokenizer) | lora_errors(form, loras)
            return field_messages(errors)

        # Plain-language messages next to a field as soon as its value is wrong — not for fields
        # still to be filled in until Generate was pressed once (from then on those too, so a
        # later check never takes Generate's messages away before they are dealt with).
        pressed = gr.Checkbox(value=False, visible="hidden", elem_id="generate-pressed")

        def live(*values: Any) -> list[dict[str, Any]]:
            *fields, after_generate = values
            form = form_from_values(fields)
            errors = validate_form(form, tokenizer=tokenizer) | lora_errors(form, loras)
            if not after_generate:
                errors = only_wrong(errors)
            return field_messages(errors) + [gr.validate(True, "")]

        text_keys = [k for k in FORM_FIELDS if k.split(".")[-1] in _TYPED]
        file_keys = [
            k for k in FORM_FIELDS if k.split(".")[-1] in ("images", "mask", "init_image")
        ] + ["inpaint_mask"]
        # (Gradio shows a validator's messages under the fields; the event itself does nothing.)
        checks = dict(
            inputs=inputs + [pressed],
            outputs=None,
            validator=live,
            show_progress="hidden",
            trigger_mode="always_last",
            concurrency_limit=None,
        )
        gr.on(
            [w[k].release if isinstance(w[k], gr.Slider) else w[k].change for k in text_keys]
            + [w[k].change for k in file_keys]
            + [w[k].change for k in _CHOICES],
            _nothing,
            **checks,
        )
        drawn.then(_nothing, **checks)

        def run(*values: Any, progress: gr.Progress = gr.Progress()):  # noqa: B008 (gradio's API)
            form = form_from_values(values)
            seed = pick_seed(form)
            try:
                lora, lora_scale = lora_choice(form, loras)
                build_request(form, seed=seed, tokenizer=tokenizer)  # before copying anything
                run_dir = new_run_folder(out_root)
                request = build_request(_with_copied_files(form, run_dir), seed=seed)
                if loras:
                    use_lora(model.pipe, lora, lora_scale)
                progress(0.0, desc="encoding subjects")
                [result] = generate(
                    model,
                    [request],
                    progress=False,
                    on_step=lambda done, total: progress((done, total), desc="denoising"),
                )
                run_info = info_with_lora(info, loras, lora, lora_scale)
                records = write_result(result, run_dir, run_info, stem="image")
            except MSDiffusionError as err:  # FormErrors and InputError included: one line
                raise gr.Error(str(err), print_exception=False) from None
            gallery = []
            for record, image_seed in zip(records, result.seeds, strict=True):
                gallery.append((record["image"], f"seed {image_seed}"))
                gallery.append((record["overlay"], f"seed {image_seed} · layout"))
            where = Path(out_dir) / run_dir.name
            message = (
                f"{len(records)} image(s) with seed {seed} in `{where}`. Untick *New random "
                "seed* to make this one again; each sidecar restores this page (Load a request)."
            )
            return gallery, [r["sidecar"] for r in records], seed, message

        generate_button.click(fn=None, js="() => true", outputs=pressed, queue=False)
        generate_button.click(
            run,
            inputs=inputs,
            outputs=[results, sidecars, w["seed"], status],
            validator=validator,
            concurrency_limit=1,
            concurrency_id="generate",
            show_progress="full",
            show_progress_on=[results],  # one progress bar, over the results
        )

        def save(*values: Any) -> str:
            form = form_from_values(values)
            try:
                request = build_request(form, seed=pick_seed(form))
            except MSDiffusionError as err:
                raise gr.Error(str(err), print_exception=False) from None
            path = Path(tempfile.mkdtemp(prefix="msdiffusion-ui-")) / "request.json"
            request = persist_images(request, path.parent)  # a mask drawn from the boxes
            path.write_text(json.dumps(request.to_dict(), indent=2))
            return str(path)

        save_button.click(save, inputs=inputs, outputs=saved, validator=validator)

        # Whole-form updates (load, clear, remove): every field, the canvas, the open slots.
        form_outputs = inputs + [canvas, shown, *slots, add_button]

        def whole_form(form: Form, count: int, active: int = 0) -> list[Any]:
            count = max(1, min(MAX_SUBJECTS, count))
            return (
                form_to_values(form)
                + [canvas_for(form, active=min(active, count - 1), count=count), count]
                + [gr.Column(visible=k < count) for k in range(MAX_SUBJECTS)]
                + [gr.Button(visible=count < MAX_SUBJECTS)]
            )

        def load(path: str | None):
            if not path:
                return [gr.skip()] * len(form_outputs) + [""]
            try:
                found = find_own_sidecar(path, out_root)
                requests = read_requests(found)
                if not requests:
                    raise FormErrors({"request": "the file holds no request"})
                form = form_from_request(requests[0], default_size=size)
                chosen = lora_from_sidecar(json.loads(Path(found).read_text()), loras)
            except (MSDiffusionError, ValueError) as err:
                return [gr.skip()] * len(form_outputs) + [f"**Could not load:** {err}"]
            if chosen is not None:
                form = replace(form, lora=chosen[0], lora_scale=chosen[1])
            note = f"Loaded request 1 of {len(requests)}." if len(requests) > 1 else "Loaded."
            return whole_form(form, shown_slots(form)) + [note]

        # After a whole-form update the canvas is drawn again from the fields: the fields' own
        # change events (phrase → label, size → frame) run in the browser meanwhile, each with
        # the canvas as it was when it fired, and the last of them would otherwise win.
        def redraw(*values: Any) -> dict[str, Any]:
            *fields, count = values
            return canvas_for(form_from_values(fields), count=count)

        after = dict(
            fn=redraw, inputs=inputs + [shown], outputs=canvas, show_progress="hidden", queue=False
        )
        wire_picture(w, size, after)
        load_file.upload(
            load,
            inputs=load_file,
            outputs=form_outputs + [load_status],
            show_progress_on=[load_status],
        ).then(**after)

        for k in range(MAX_SUBJECTS):

            def clear(*values: Any, k=k):
                *fields, count = values
                return whole_form(clear_slot(form_from_values(fields), k), count, active=k)

            def remove(*values: Any, k=k):
                *fields, count = values
                return whole_form(shift_out(form_from_values(fields), k), count - 1, active=k)

            clear_buttons[k].click(clear, inputs=inputs + [shown], outputs=form_outputs).then(
                **after
            )
            remove_buttons[k].click(remove, inputs=inputs + [shown], outputs=form_outputs).then(
                **after
            )

        def add(count: int, value: dict[str, Any]):
            count = min(MAX_SUBJECTS, count + 1)
            value = {**value, "shown": count, "active": count - 1}
            return (
                [count, value]
                + [gr.Column(visible=k < count) for k in range(MAX_SUBJECTS)]
                + [gr.Button(visible=count < MAX_SUBJECTS)]
            )

        add_button.click(
            add, inputs=[shown, canvas], outputs=[shown, canvas, *slots, add_button], queue=False
        )

        layout_outputs = [w["prompt"], *phrase_fields, *box_fields, canvas, status]
        for button, layout in zip(layout_buttons, EXAMPLE_LAYOUTS, strict=True):

            def use_layout(*values: Any, layout=layout):
                *fields, count = values
                form, note = apply_layout(form_from_values(fields), layout)
                return (
                    [form.prompt]
                    + [s.phrase for s in form.subjects]
                    + [s.box for s in form.subjects]
                    + [canvas_for(form, count=max(count, shown_slots(form))), note]
                )

            button.click(use_layout, inputs=inputs + [shown], outputs=layout_outputs).then(**after)
    return demo


def _nothing(*values: Any) -> None:
    return None


# Fields checked as they are typed in (sliders when let go; not on focus loss, which a click on
# Generate would cause: that check could land after Generate's own), menus when they change.
_TYPED = (
    "prompt",
    "negative_prompt",
    "phrase",
    "box",
    "scale",
    "width",
    "height",
    "num_images",
    "seed",
    "steps",
    "guidance",
    "mask_threshold",
    "start_step",
    "lora_scale",
    "strength",
)
_CHOICES = ("scheduler", "lora", "auto_layout", "repaint")


def _settings_widgets(w: dict[str, Any], loras: list[str], start: Form) -> None:
    """The *Generation settings* accordion: sampling, the subject scale, the scheduler, the LoRA,
    auto layout."""
    with gr.Accordion("Generation settings", open=False, elem_id="settings"):
        w["steps"] = gr.Slider(1, 150, value=30, step=1, label="Steps", elem_id="steps")
        w["guidance"] = gr.Slider(
            0.0, 20.0, value=7.5, step=0.1, label="Guidance scale", elem_id="guidance"
        )
        w["scale"] = gr.Slider(
            0.0, 2.0, value=0.6, step=0.05, label="Subject scale (image attention)", elem_id="scale"
        )
        w["scheduler"] = gr.Dropdown(
            [("the model's own", "")]
            + [(f"{name} — {what}", name) for name, (_, _, what) in SCHEDULERS.items()],
            value="",
            label="Scheduler",
            elem_id="scheduler",
        )
        with gr.Row(visible=bool(loras)):
            w["lora"] = gr.Dropdown(
                lora_labels(loras), value=start.lora, label="LoRA", elem_id="lora"
            )
            w["lora_scale"] = gr.Slider(
                0.0,
                2.0,
                value=start.lora_scale,
                step=0.05,
                label="LoRA scale",
                elem_id="lora_scale",
            )
        w["auto_layout"] = gr.Checkbox(
            label="Auto layout (refine the boxes from attention maps)",
            value=False,
            elem_id="auto_layout",
        )
        with gr.Row():
            w["mask_threshold"] = gr.Slider(
                0.0, 0.95, value=0.5, step=0.05, label="Mask threshold", elem_id="mask_threshold"
            )
            w["start_step"] = gr.Number(
                label="Start step", value=5, precision=0, minimum=0, elem_id="start_step"
            )
        w["drop_grounding"] = gr.Checkbox(
            label="Drop grounding tokens (ignore boxes and phrases in the resampler)",
            value=False,
            elem_id="drop_grounding",
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
