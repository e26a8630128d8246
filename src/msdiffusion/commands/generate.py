"""`msdiffusion generate`: prompt + subjects (or request files) → images, overlays, sidecars."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InputError

EPILOG = """\
subjects: each --subject starts a subject; the --box/--phrase/--subject-scale/--mask after it
belong to it. Boxes are x0,y0,x1,y1 in [0, 1] of the output (x = column).

example:
  msdiffusion generate --preset tiny --prompt "a dog and a cat on the beach" \\
    --subject dog.png --box 0,0.3,0.5,0.9 --phrase dog \\
    --subject cat.png --box 0.5,0.3,1,0.9 --phrase cat --out outputs/run
"""


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


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model selection flags shared by every command that loads the pipeline."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "toy", "sdxl"],
        help="component set: tiny (random weights, offline), toy (trained on the toy world, "
        "shipped, offline) or sdxl (released weights from the hub or the local cache) "
        "(default: tiny)",
    )
    group.add_argument("--base", help="SDXL pipeline folder or hub id (overrides the preset)")
    group.add_argument("--image-encoder", help="CLIP ViT-bigG/14 vision model folder or hub id")
    group.add_argument(
        "--adapter",
        help="adapter: our folder or .safetensors, a released ms_adapter.bin, or a hub repo id "
        "holding either (ours is looked for first)",
    )
    group.add_argument(
        "--vae",
        help="VAE folder or hub id (default: the preset's — the fp16-fix VAE for sdxl); "
        "'base' keeps the base pipeline's own",
    )
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    group.add_argument(
        "--dtype",
        default="auto",
        help="auto (fp16 on GPU, fp32 on CPU), float32, float16, bfloat16",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "generate",
        help="generate images with subjects in boxes",
        description="Generate images in which each subject appears in its box.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prompt", help="the prompt (or use --request)")
    p.add_argument("--negative-prompt", default="", help="negative prompt")
    p.add_argument(
        "--request",
        action="append",
        default=[],
        metavar="JSON",
        help='request file: one request, a list, {"requests": [...]}, or a sidecar '
        "(repeatable; replaces --prompt/--subject)",
    )
    s = p.add_argument_group("subjects")
    s.add_argument(
        "--subject",
        nargs="+",
        action=_SubjectAction,
        metavar="IMAGE",
        help="reference image(s) of a new subject (several = views of one subject)",
    )
    s.add_argument("--box", dest="subject_box", action=_SubjectField, metavar="X0,Y0,X1,Y1")
    s.add_argument(
        "--phrase",
        dest="subject_phrase",
        action=_SubjectField,
        metavar="WORD",
        help="the word(s) naming the subject in the prompt",
    )
    s.add_argument(
        "--subject-scale",
        dest="subject_scale",
        type=float,
        action=_SubjectField,
        metavar="S",
        help="this subject's scale (default: --scale)",
    )
    s.add_argument(
        "--mask",
        dest="subject_mask",
        action=_SubjectField,
        metavar="PNG",
        help="region mask (output aspect ratio; white = inside) instead of a box",
    )
    g = p.add_argument_group("generation")
    g.add_argument("--height", type=int, help="output height (default: the preset's, 1024/256)")
    g.add_argument("--width", type=int, help="output width (default: the preset's)")
    g.add_argument("--steps", type=int, default=30, help="denoising steps (default: 30)")
    g.add_argument("--guidance", type=float, default=7.5, help="CFG scale (default: 7.5)")
    g.add_argument("--scale", type=float, default=0.6, help="image-branch scale γ (default: 0.6)")
    g.add_argument("--seed", type=int, default=0, help="seed of image 0; image k uses seed+k")
    g.add_argument("--num-images", type=int, default=1, help="images per prompt (default: 1)")
    g.add_argument(
        "--mask-threshold",
        type=float,
        help="auto layout: threshold of the phrase attention maps (e.g. 0.5)",
    )
    g.add_argument(
        "--start-step",
        type=int,
        default=5,
        help="auto layout: first step using the attention-map regions (default: 5)",
    )
    g.add_argument(
        "--drop-grounding-tokens",
        action="store_true",
        help="start the resampler from its learned queries (no phrase/box embedding)",
    )
    g.add_argument("--batch-size", type=int, default=1, help="prompts per pipeline call")
    add_model_arguments(p)
    p.add_argument("--out", default="outputs", help="output folder (default: outputs)")
    p.set_defaults(func=run, subjects=None)


def requests_from_args(args: argparse.Namespace) -> list:
    from ..request import GenerationRequest, read_requests

    if args.request:
        if args.prompt or args.subjects:
            raise InputError(
                "--request", "replaces --prompt and --subject; give one or the other", args.request
            )
        return [r for path in args.request for r in read_requests(path)]
    if not args.prompt:
        raise InputError("--prompt", "is required (or --request FILE)", None)
    subjects = []
    for i, subject in enumerate(args.subjects or [], start=1):
        if "phrase" not in subject:
            raise InputError(f"--subject #{i}", "needs a --phrase", subject["images"])
        subjects.append(
            {
                "images": subject["images"],
                "box": subject.get("box"),
                "phrase": subject["phrase"],
                "scale": subject.get("scale"),
                "mask": subject.get("mask"),
            }
        )
    return [
        GenerationRequest.from_dict(
            {
                "prompt": args.prompt,
                "negative_prompt": args.negative_prompt,
                "subjects": subjects,
                "height": args.height,
                "width": args.width,
                "num_inference_steps": args.steps,
                "guidance_scale": args.guidance,
                "scale": args.scale,
                "seed": args.seed,
                "num_images": args.num_images,
                "mask_threshold": args.mask_threshold,
                "start_step": args.start_step,
                "drop_grounding_tokens": args.drop_grounding_tokens,
            }
        )
    ]


def load_model(args: argparse.Namespace):
    from ..loading import load_pipeline

    return load_pipeline(
        args.preset,
        base=args.base,
        image_encoder=args.image_encoder,
        adapter=args.adapter,
        vae=args.vae,
        device=args.device,
        dtype=args.dtype,
    )


def run(args: argparse.Namespace) -> int:
    requests = requests_from_args(args)  # validate everything before loading any model
    from ..inference import generate, write_result

    model = load_model(args)
    results = generate(model, requests, batch_size=args.batch_size)  # checks them against it
    for i, result in enumerate(results):
        stem = "image" if len(results) == 1 else f"request{i:03d}"
        for files in write_result(result, args.out, model.info, stem=stem):
            print(
                f"wrote {files['image']}  (overlay {files['overlay']}, sidecar {files['sidecar']})"
            )
    return 0
