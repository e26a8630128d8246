"""`msdiffusion generate`: prompt + subjects (or request files) → images, overlays, sidecars.

Every check that needs no model runs first (flags, request files, the output folder, every
reference, mask and control image readable, sizes); then the model loads, the images are made,
and a new numbered run folder under ``--out`` receives them — nothing is written before, and
nothing is overwritten.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from dataclasses import fields, replace
from typing import Any

from ..errors import ErrorList, InputError
from ..flags import add_flag, with_default
from .model import ModelSettings, add_model_arguments

EPILOG = """\
subjects: each --subject starts a subject; the --box/--phrase/--subject-scale/--mask after it
belong to it. Boxes are x0,y0,x1,y1 in [0, 1] of the output (x = column, y = row).

editing: --init-image PHOTO starts from a picture (image-to-image, --strength 0.8 by default);
with --inpaint-mask PNG only its white part is repainted (--strength 0.9999), every subject's box
inside it, and the rest of the picture comes back pixel for pixel.

Each call writes a new numbered run folder under --out (outputs/0001, outputs/0002, ...): the
images, their layout overlays and JSON sidecars (the exact recipe). --request SIDECAR replays
one on the model it records; request flags given with --request (--seed, --steps, --height,
--scale, --num-images, ...) change every request read, and the new sidecar records them.

examples:
  msdiffusion generate --preset tiny --prompt "a dog and a cat on the beach" \\
    --subject dog.png --box 0,0.3,0.5,0.9 --phrase dog \\
    --subject cat.png --box 0.5,0.3,1,0.9 --phrase cat --seed 0 --out outputs
  msdiffusion generate --preset toy --prompt "a ball in a field" --init-image field.png \
    --inpaint-mask right-half.png --subject ball.png --box 0.55,0.2,0.95,0.8 --phrase ball
  msdiffusion generate --preset sdxl --base fine-tune.safetensors ...   # a single-file SDXL
  msdiffusion generate --request outputs/0001/image_0.json            # replay it exactly
  msdiffusion generate --request outputs/0001/image_0.json --seed 7 --num-images 4
"""

S = argparse.SUPPRESS  # request and model flags: only those given count (they override requests)

# generate's flag (dest) → the request field it sets
REQUEST_FLAGS = {
    "negative_prompt": "negative_prompt",
    "prompt_2": "prompt_2",
    "negative_prompt_2": "negative_prompt_2",
    "height": "height",
    "width": "width",
    "steps": "num_inference_steps",
    "guidance_scale": "guidance_scale",
    "scale": "scale",
    "seed": "seed",
    "num_images": "num_images",
    "scheduler": "scheduler",
    "mask_threshold": "mask_threshold",
    "start_step": "start_step",
    "drop_grounding_tokens": "drop_grounding_tokens",
    "control_image": "control_image",
    "controlnet_scale": "controlnet_conditioning_scale",
    "init_image": "init_image",
    "strength": "strength",
    "inpaint_mask": "inpaint_mask",
}
MODEL_FLAGS = tuple(f.name for f in fields(ModelSettings))


class _SubjectAction(argparse.Action):
    """--subject IMAGE [IMAGE ...] starts a subject; later per-subject flags fill it in."""

    def __call__(self, parser, namespace, values, option_string=None):
        subjects = getattr(namespace, "subjects", None) or []
        subjects.append({"images": list(values)})
        namespace.subjects = subjects


class _SubjectField(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        subjects = getattr(namespace, "subjects", None)
        if not subjects:
            parser.error(f"{option_string} must follow a --subject IMAGE")
        key = self.dest.removeprefix("subject_")
        if key in subjects[-1]:
            parser.error(f"{option_string} given twice for subject {len(subjects)}")
        subjects[-1][key] = values


def register(sub: Any) -> None:
    from ..pipelines.schedulers import scheduler_names

    p = sub.add_parser(
        "generate",
        help="generate images with subjects in boxes",
        description="Generate images in which each subject appears in its box.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    text = p.add_argument_group("text")
    text.add_argument("--prompt", metavar="TEXT", help="the prompt (required without --request)")
    add_flag(
        text,
        "negative_prompt",
        default=S,
        shown="none: the model's own unconditional — zero embeddings for SDXL; "
        "an empty string is encoded as text",
    )
    text.add_argument(
        "--prompt-2",
        metavar="TEXT",
        default=S,
        help=with_default("prompt for SDXL's second text encoder", "the prompt"),
    )
    text.add_argument(
        "--negative-prompt-2",
        metavar="TEXT",
        default=S,
        help=with_default("negative prompt for the second text encoder", "the negative prompt"),
    )
    p.add_argument(
        "--request",
        action="append",
        default=[],
        metavar="JSON",
        help='request file: one request, a list, {"requests": [...]}, or a sidecar (replayed '
        "on its model); repeatable; replaces --prompt/--subject; paths in it are relative to "
        "its folder (default: none)",
    )
    s = p.add_argument_group("subjects")
    s.add_argument(
        "--subject",
        nargs="+",
        action=_SubjectAction,
        metavar="IMAGE",
        help="reference image(s) of a new subject (several = views of one subject) "
        "(default: no subjects, plain SDXL)",
    )
    s.add_argument(
        "--box",
        dest="subject_box",
        action=_SubjectField,
        metavar="X0,Y0,X1,Y1",
        help="this subject's box in [0, 1] of the output, x0 < x1, y0 < y1 (default: none; "
        "needs --mask or --mask-threshold then)",
    )
    s.add_argument(
        "--phrase",
        dest="subject_phrase",
        action=_SubjectField,
        metavar="WORD",
        help="the word(s) naming the subject in the prompt (required per subject)",
    )
    s.add_argument(
        "--subject-scale",
        dest="subject_scale",
        type=float,
        action=_SubjectField,
        metavar="X",
        help="this subject's image-attention scale (default: --scale)",
    )
    s.add_argument(
        "--mask",
        dest="subject_mask",
        action=_SubjectField,
        metavar="PNG",
        help="region mask of the output's aspect ratio, white = inside, instead of a box "
        "(default: none)",
    )
    g = p.add_argument_group("generation")
    add_flag(g, "height", default=S, shown="the preset's: tiny 256, toy 64, sdxl 1024")
    add_flag(g, "width", default=S, shown="the preset's")
    add_flag(g, "steps", default=S, shown=30)
    add_flag(g, "guidance_scale", default=S, shown=7.5)
    add_flag(g, "scale", default=S, shown=0.6)
    add_flag(
        g,
        "seed",
        default=S,
        help="seed of image 0; image k uses seed + k (a CPU generator: the same on every device)",
        shown="random, printed and kept in the sidecar",
    )
    add_flag(g, "num_images", default=S, shown=1)
    g.add_argument(
        "--scheduler",
        choices=scheduler_names(),
        default=S,
        help=with_default("sampler", "the model's own; SDXL base: euler"),
    )
    g.add_argument(
        "--mask-threshold",
        type=float,
        default=S,
        metavar="X",
        help=with_default(
            "auto layout: refine regions from the phrases' attention maps, thresholded at X "
            "(e.g. 0.5)",
            "off",
        ),
    )
    g.add_argument(
        "--start-step",
        type=int,
        default=S,
        metavar="N",
        help=with_default("auto layout: the first step that uses the refined regions", 5),
    )
    add_flag(g, "drop_grounding_tokens", default=S)
    g.add_argument(
        "--control-image",
        metavar="IMAGE",
        default=S,
        help=with_default("the ControlNet's condition (edges, depth, pose...)", "none"),
    )
    g.add_argument(
        "--controlnet-scale",
        type=float,
        default=S,
        metavar="X",
        help=with_default("strength of the ControlNet", 1.0),
    )
    e = p.add_argument_group("editing an existing picture")
    add_flag(e, "init_image", default=S, shown="none: text-to-image")
    add_flag(e, "strength", default=S, shown="0.8; with --inpaint-mask 0.9999")
    add_flag(e, "inpaint_mask", default=S, shown="none: image-to-image over the whole picture")
    add_flag(g, "batch_size", default=1)
    add_model_arguments(p, default=S)
    p.add_argument(
        "--allow-model-change",
        action="store_true",
        help="with --request SIDECAR: use the model flags given where they differ from the "
        "sidecar's model (not a replay: the image differs) (default: off, refused)",
    )
    p.add_argument(
        "--out",
        default="outputs",
        metavar="DIR",
        help="output folder; each call writes a new numbered run folder in it (default: outputs)",
    )
    p.set_defaults(func=run, subjects=None)


def _given(args: argparse.Namespace, names: Any) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def _request_from_flags(args: argparse.Namespace, overrides: dict[str, Any]) -> Any:
    from ..request import GenerationRequest

    if not args.prompt:
        raise InputError("--prompt", "is required (or --request FILE)", None)
    errors = ErrorList()
    subjects = []
    for i, subject in enumerate(args.subjects or [], start=1):
        if "phrase" not in subject:
            errors.add(InputError(f"--subject #{i}", "needs a --phrase", subject["images"]))
        subjects.append({**subject, "images": subject["images"], "phrase": subject.get("phrase")})
    errors.raise_if_any()
    return GenerationRequest.from_dict({"prompt": args.prompt, "subjects": subjects, **overrides})


def plan_from_args(args: argparse.Namespace):
    """The requests and the model of a command line, checked without any model."""
    from .model import model_flags
    from .replay import Plan, plan_replay, read_sources

    overrides = {REQUEST_FLAGS[k]: v for k, v in _given(args, REQUEST_FLAGS).items()}
    if args.batch_size < 1:
        raise InputError("--batch-size", "must be >= 1", args.batch_size)
    if args.request:
        if args.prompt or args.subjects:
            raise InputError(
                "--request",
                "replaces --prompt and --subject; give one or the other",
                args.request,
            )
        return plan_replay(
            read_sources(args.request),
            overrides,
            model_flags(args, one_lora=True),
            args.allow_model_change,
        )
    if args.allow_model_change:
        raise InputError("--allow-model-change", "only applies with --request SIDECAR", True)
    seeded = "seed" in overrides
    overrides.setdefault("seed", secrets.randbelow(2**31))
    plan = Plan(
        requests=[_request_from_flags(args, overrides)],
        model=ModelSettings(**model_flags(args, one_lora=True)),
    )
    plan.sources, plan.keep = [None], [None]
    if not seeded:
        plan.notes.append(
            f"seed {overrides['seed']} (random; --seed {overrides['seed']} repeats it)"
        )
    return plan


def check_requests(
    requests: list[Any], default_size: int, vae_scale_factor: int | None = None
) -> None:
    """Every request's files (readable references, masks, control images, pictures to start from)
    and layout rules that need no model (subjects inside an inpainting mask where the model's
    ``vae_scale_factor`` is known); every error at once."""
    errors = ErrorList()
    for i, request in enumerate(requests):
        with errors.check(*(("requests", i) if len(requests) > 1 else ())):
            request.check(default_size, vae_scale_factor)
    errors.raise_if_any()


def check_base_file(plan: Any) -> None:
    """A replayed sidecar made on a checkpoint file: the file to load must be the same bytes
    (hashed once: loading remembers the digest)."""
    from ..loading import file_sha256, is_single_file

    base = plan.model.base
    if plan.base_sha256 is None or not is_single_file(base) or not os.path.isfile(base):
        return
    now = file_sha256(base)
    if now == plan.base_sha256:
        return
    message = (
        f"is not the checkpoint file the sidecar was made with (SHA-256 {plan.base_sha256[:12]}…, "
        f"this file {now[:12]}…)"
    )
    if not plan.allow_model_change:
        raise InputError(
            "--base",
            message + "; add --allow-model-change to make its recipe with this one "
            "(the image will differ)",
            base,
        )
    plan.notes.append(f"--base {base} {message}: not a replay, the image will differ")


def run(args: argparse.Namespace) -> int:
    from ..presets import PRESETS
    from .outputs import check_output_folder, new_run_folder

    plan = plan_from_args(args)
    out = check_output_folder(args.out)
    preset = PRESETS[plan.model.preset]
    check_requests(
        plan.requests,
        preset.default_size,
        preset.vae_scale_factor if plan.model.base is None else None,
    )
    from ..inference import generate, write_result
    from .model import check_device, load_model

    check_device(plan.model)
    check_base_file(plan)
    model = load_model(plan.model)
    for note in plan.notes:  # the model is there: what this run does differently
        print(f"note: {note}", file=sys.stderr)
    if plan.threads and model.info.get("threads") not in (None, plan.threads):
        import torch  # the thread count the replayed images were made with: the same sums

        torch.set_num_threads(plan.threads)
        model.info["threads"] = plan.threads
    results = generate(model, plan.requests, batch_size=args.batch_size)
    run_dir = new_run_folder(out)
    for i, (result, keep, source) in enumerate(zip(results, plan.keep, plan.sources)):
        if keep is not None:  # an exact replay: the one image of its call that was asked for
            result = replace(
                result,
                images=[result.images[keep]],
                seeds=[result.seeds[keep]],
                call_offset=keep,
            )
        stem = "image" if len(results) == 1 else f"request{i:03d}"
        extra = {"source": source} if source else None
        for files in write_result(result, run_dir, model.info, stem=stem, extra=extra):
            print(
                f"wrote {files['image']}  (overlay {files['overlay']}, sidecar {files['sidecar']})"
            )
    return 0
