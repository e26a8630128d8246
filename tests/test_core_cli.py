"""`msdiffusion generate` / `convert` in-process: request files, sidecars, the request defaults,
user errors. (The console script itself: test_faces_generate.py.)"""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

from msdiffusion.cli import main
from msdiffusion.errors import InputError

DEMO = [
    "generate",
    "--preset",
    "tiny",
    "--prompt",
    "a dog and a cat on the beach",
    "--subject",
    str(EXAMPLES / "dog.png"),
    "--box",
    "0.05,0.3,0.5,0.9",
    "--phrase",
    "dog",
    "--subject",
    str(EXAMPLES / "cat.png"),
    "--box",
    "0.5,0.3,0.95,0.9",
    "--phrase",
    "cat",
    "--height",
    "64",
    "--width",
    "128",
    "--steps",
    "2",
]


def test_the_request_default_is_the_pipelines_own_negative_prompt(tmp_path):
    """None — no negative prompt — everywhere: a request's image is the pipeline's image called
    without one (zero embeddings for SDXL), and a typed negative prompt changes it."""
    from msdiffusion import Subject
    from msdiffusion.inference import generate
    from msdiffusion.loading import load_pipeline
    from msdiffusion.request import GenerationRequest, SubjectSpec

    model = load_pipeline("tiny")
    assert GenerationRequest(prompt="x").negative_prompt is None
    request = GenerationRequest(
        prompt="a dog",
        subjects=[SubjectSpec([str(EXAMPLES / "dog.png")], (0, 0, 0.5, 1), "dog")],
        height=64,
        width=64,
        num_inference_steps=2,
        seed=3,
    )
    [ours] = generate(model, [request], progress=False)
    direct = model.pipe(
        "a dog",
        [Subject(Image.open(EXAMPLES / "dog.png"), (0, 0, 0.5, 1), "dog")],
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    assert ours.images[0].tobytes() == direct.tobytes()
    request.negative_prompt = "blurry"
    [other] = generate(model, [request], progress=False)
    assert other.images[0].tobytes() != direct.tobytes()


def test_in_memory_masks_and_images_are_kept_with_the_sidecar_and_nothing_is_replaced(tmp_path):
    from msdiffusion.inference import GenerationResult, write_result
    from msdiffusion.request import GenerationRequest, SubjectSpec, read_requests

    mask = np.zeros((64, 64), dtype=bool)
    mask[8:40, 8:40] = True
    request = GenerationRequest(
        prompt="a dog",
        subjects=[SubjectSpec([Image.open(EXAMPLES / "dog.png")], None, "dog", mask=mask)],
        height=64,
        width=64,
    )
    result = GenerationResult(request, [Image.new("RGB", (64, 64))], [0])
    [files] = write_result(result, tmp_path, {"preset": "tiny"})
    [again] = read_requests(files["sidecar"])
    assert np.array_equal(again.subjects[0].load()[1], mask)  # the mask, as a PNG beside it
    assert again.subjects[0].load()[0][0].size == Image.open(EXAMPLES / "dog.png").size
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(InputError, match="already holds image_0.png"):
        write_result(result, tmp_path, {"preset": "tiny"})
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_request_file_with_a_batch(tmp_path):
    shutil.copy(EXAMPLES / "dog.png", tmp_path / "dog.png")
    requests = {
        "requests": [
            {
                "prompt": "a dog",
                "subjects": [{"images": ["dog.png"], "box": [0, 0, 0.5, 1], "phrase": "dog"}],
                "height": 64,
                "width": 64,
                "num_inference_steps": 2,
            },
            {
                "prompt": "a dog on grass",
                "subjects": [
                    {"image": "dog.png", "box": "0.5,0,1,1", "phrase": "dog", "scale": 0.8}
                ],
                "height": 64,
                "width": 64,
                "num_inference_steps": 2,
                "seed": 7,
            },
        ]
    }
    (tmp_path / "req.json").write_text(json.dumps(requests))
    assert (
        main(
            [
                "generate",
                "--request",
                str(tmp_path / "req.json"),
                "--batch-size",
                "2",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 0
    )
    names = sorted(p.name for p in (tmp_path / "out" / "0001").glob("*.png"))
    assert names == [
        "request000_0.png",
        "request000_0_overlay.png",
        "request001_0.png",
        "request001_0_overlay.png",
    ]
    assert json.loads((tmp_path / "out" / "0001" / "request001_0.json").read_text())["seed"] == 7


def _bad_image(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")
    return str(path)


def _mask(tmp_path):
    path = tmp_path / "mask.png"
    Image.new("L", (64, 64), 255).save(path)
    return str(path)


def _replace(args, flag, value):
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


ERRORS = [
    (lambda t: _replace(DEMO, "--box", "0.1,0.2,0.3"), "must be four numbers"),
    (lambda t: _replace(DEMO, "--box", "0.1,0.2,1.3,0.5"), "must lie in [0, 1]"),
    (lambda t: _replace(DEMO, "--box", "0.6,0.2,0.3,0.5"), "needs x0 < x1 and y0 < y1"),
    (lambda t: _replace(DEMO, "--box", "a,b,c,d"), "must be four numbers"),
    (
        lambda t: [
            "generate",
            "--prompt",
            "a dog",
            "--box",
            "0,0,1,1",
            "--subject",
            str(EXAMPLES / "dog.png"),
            "--phrase",
            "dog",
        ],
        "must follow a --subject",
    ),
    (
        lambda t: [
            "generate",
            "--prompt",
            "a dog",
            "--subject",
            str(EXAMPLES / "dog.png"),
            "--box",
            "0,0,1,1",
        ],
        "needs a --phrase",
    ),
    (
        lambda t: [
            "generate",
            "--prompt",
            "a dog",
            "--subject",
            str(EXAMPLES / "dog.png"),
            "--box",
            "0,0,1,1",
            "--box",
            "0,0,1,1",
            "--phrase",
            "dog",
        ],
        "given twice",
    ),
    (lambda t: _replace(DEMO, "--phrase", " "), "must be a non-empty string"),
    (
        lambda t: DEMO + ["--mask-threshold", "0.5"] + ["--prompt", "a cat and a bird"],
        "must appear in the prompt",
    ),
    (lambda t: DEMO[:11] + ["--mask", _mask(t)] + DEMO[11:], "aspect ratio"),
    (lambda t: _replace(DEMO, "--subject", str(t / "missing.png")), "file does not exist"),
    (lambda t: _replace(DEMO, "--subject", _bad_image(t)), "is not a readable image"),
    (lambda t: _replace(DEMO, "--height", "60"), "must be a positive multiple of 8"),
    (lambda t: _replace(DEMO, "--steps", "0"), "num_inference_steps: must be an integer >= 1"),
    (lambda t: DEMO + ["--adapter", str(t / "nothing-here")], "no such file or folder"),
    (lambda t: ["generate", "--request", str(t / "none.json")], "file does not exist"),
    (lambda t: DEMO + ["--scheduler", "nope"], "invalid choice"),
    (lambda t: DEMO + ["--negative-prompt-2", "x", "--lora-scale", "-1"], "--lora-scale"),
]


@pytest.mark.parametrize("make_args,message", ERRORS)
def test_user_errors_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, make_args, message):
    out = tmp_path / "out"
    code = main(make_args(tmp_path) + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/msdiffusion-cli-pickle-ran",))


def test_convert_command_and_checkpoint_errors(tmp_path, capsys, tiny_factory, make_adapter):
    from msdiffusion.models.adapter import MSAdapter
    from msdiffusion.models.convert import save_original_checkpoint

    unet = tiny_factory()["unet"]
    adapter = make_adapter(unet, seed=5)
    save_original_checkpoint(adapter, unet, tmp_path / "ms_adapter.bin")
    assert (
        main(
            ["convert", str(tmp_path / "ms_adapter.bin"), str(tmp_path / "ours"), "--unet", "tiny"]
        )
        == 0
    )
    loaded = MSAdapter.from_pretrained(tmp_path / "ours")
    assert all(
        torch.equal(a, b)
        for a, b in zip(adapter.state_dict().values(), loaded.state_dict().values())
    )
    # the converted adapter drives the tiny pipeline
    assert main(DEMO + ["--adapter", str(tmp_path / "ours"), "--out", str(tmp_path / "o")]) == 0
    capsys.readouterr()
    (tmp_path / "junk.bin").write_text("junk")
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump(_RunsCode(), f)
    for bad, message in (
        ("junk.bin", "not a PyTorch checkpoint"),
        ("evil.bin", "weights_only"),
        ("ms_adapter.bin", "has shape"),
    ):
        unet_flag = ["--unet", "tiny"] if bad != "ms_adapter.bin" else ["--unet", "tiny-wrong"]
        if bad == "ms_adapter.bin":  # released sizes against a tiny file: shapes differ
            code = main(DEMO + ["--adapter", str(tmp_path / bad), "--out", str(tmp_path / "x")])
        else:
            code = main(["convert", str(tmp_path / bad), str(tmp_path / "x"), *unet_flag])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "x").exists()
    assert not os.path.exists("/tmp/msdiffusion-cli-pickle-ran")


def test_sdxl_preset_offline_without_files_says_what_to_download(capsys):
    code = main(DEMO[:1] + ["--preset", "sdxl"] + DEMO[3:])
    err = capsys.readouterr().err
    assert code == 2 and "--preset tiny" in err and "hf download" in err
    assert err.count("\n") == 1


def test_sdxl_path_loads_every_component_from_local_folders(tmp_path, tiny_factory, make_adapter):
    """The real loading path (from_pretrained on folders) with tiny weights."""
    from diffusers import StableDiffusionXLPipeline

    from msdiffusion.inference import generate
    from msdiffusion.loading import load_pipeline
    from msdiffusion.request import GenerationRequest, SubjectSpec

    components = tiny_factory()
    encoder = components.pop("image_encoder")
    components.pop("feature_extractor")
    StableDiffusionXLPipeline(**components).save_pretrained(tmp_path / "base")
    encoder.save_pretrained(tmp_path / "encoder")
    make_adapter(components["unet"], seed=2).save_pretrained(tmp_path / "adapter")
    model = load_pipeline(
        "sdxl",
        base=str(tmp_path / "base"),
        image_encoder=str(tmp_path / "encoder"),
        adapter=str(tmp_path / "adapter"),
        vae="base",  # the base's own VAE instead of the preset's fp16-fix one
        device="cpu",
        dtype="float32",
    )
    request = GenerationRequest(
        prompt="a dog",
        subjects=[SubjectSpec([str(EXAMPLES / "dog.png")], (0, 0, 0.5, 1), "dog")],
        height=64,
        width=64,
        num_inference_steps=2,
    )
    [result] = generate(model, [request], progress=False)
    assert result.images[0].size == (64, 64)
    assert model.info["base"] == str(tmp_path / "base")
