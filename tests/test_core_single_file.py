"""Single-file SDXL bases (a fine-tune's one ``.safetensors``), written from tiny components in
the original checkpoint layout: they load through diffusers' ``from_single_file`` and give the
folder's outputs; ``load_pipeline`` takes one as the base and the sidecar records its hash."""

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from msdiffusion import (
    MSAdapter,
    MSDiffusionXLInpaintPipeline,
    MSDiffusionXLPipeline,
    Subject,
)
from msdiffusion.errors import InputError
from msdiffusion.testing.sdxl import ARCHITECTURES, adapter_kwargs, random_components
from msdiffusion.testing.single_file import write_sdxl_single_file

pytestmark = pytest.mark.usefixtures("single_thread")

KW = dict(num_inference_steps=3, guidance_scale=7.5, output_type="np", height=64, width=128)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A diffusers folder, the same weights as one checkpoint file, an image encoder, an adapter.
    The text encoders differ in width, as SDXL's (768, 1280) do: the single-file loader tells
    them apart by it."""
    components = random_components(replace(ARCHITECTURES["tiny"], text_hidden=(32, 48)), seed=0)
    root = tmp_path_factory.mktemp("single_file")
    encoder = components.pop("image_encoder")
    components.pop("feature_extractor")
    StableDiffusionXLPipeline(**components).save_pretrained(root / "base")
    encoder.save_pretrained(root / "encoder")
    write_sdxl_single_file(components, root / "fine-tune.safetensors")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        adapter = MSAdapter.for_unet(components["unet"], **adapter_kwargs("tiny"))
    adapter.save_pretrained(root / "adapter")
    return root, encoder


def subjects():
    rng = np.random.default_rng(0)
    ref = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    return [Subject(ref, (0.5, 0.1, 1.0, 0.9), "dog")]


def test_single_file_gives_the_folders_output(saved):
    root, encoder = saved
    folder = MSDiffusionXLPipeline.from_pretrained(
        root / "base", image_encoder=encoder, adapter=MSAdapter.from_pretrained(root / "adapter")
    )
    single = MSDiffusionXLPipeline.from_single_file(
        root / "fine-tune.safetensors",
        config=str(root / "base"),
        image_encoder=encoder,
        adapter=MSAdapter.from_pretrained(root / "adapter"),
        local_files_only=True,
    )
    for pipe in (folder, single):
        pipe.set_progress_bar_config(disable=True)
        assert pipe.adapter.is_installed(pipe.unet)
    # the weights are bit for bit the folder's (below); the outputs agree to float rounding (a
    # UNet call on the loaded weights differs by ~1e-6)
    expected = folder("a dog", subjects(), generator=gen(), **KW).images
    actual = single("a dog", subjects(), generator=gen(), **KW).images
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    assert np.abs(actual - folder("a dog", generator=gen(), **KW).images).max() > 1e-3
    # the inpainting pipeline loads the same file
    inpaint = MSDiffusionXLInpaintPipeline.from_single_file(
        root / "fine-tune.safetensors",
        config=str(root / "base"),
        image_encoder=encoder,
        adapter=MSAdapter.from_pretrained(root / "adapter"),
        local_files_only=True,
    )
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(inpaint, name).state_dict(), getattr(folder, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_load_pipeline_with_a_single_file_base_records_its_hash(saved, tmp_path):
    from msdiffusion.inference import generate, write_result
    from msdiffusion.loading import load_pipeline
    from msdiffusion.request import GenerationRequest, SubjectSpec

    root, _ = saved
    file = root / "fine-tune.safetensors"
    model = load_pipeline(
        "sdxl",
        base=str(file),
        base_config=str(root / "base"),
        image_encoder=str(root / "encoder"),
        adapter=str(root / "adapter"),
        vae="base",
        device="cpu",
        dtype="float32",
    )
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    assert model.info["base"] == str(file) and model.info["base_sha256"] == digest
    subjects()[0].images[0].save(tmp_path / "dog.png")
    request = GenerationRequest(
        prompt="a dog",
        subjects=[SubjectSpec([str(tmp_path / "dog.png")], (0.5, 0, 1, 1), "dog")],
        height=64,
        width=64,
        num_inference_steps=2,
    )
    [result] = generate(model, [request], progress=False)
    [written] = write_result(result, tmp_path / "out", model.info)
    sidecar = json.loads(open(written["sidecar"]).read())
    assert sidecar["model"]["base_sha256"] == digest
    with pytest.raises(InputError, match="--base-config: is needed with a single-file base"):
        load_pipeline("tiny", base=str(file))


def test_the_command_line_takes_a_checkpoint_file_and_replays_only_on_its_bytes(saved, tmp_path):
    from conftest import run_console
    from test_faces_generate import ok, refused

    root, _ = saved
    file = tmp_path / "fine-tune.safetensors"
    file.write_bytes((root / "fine-tune.safetensors").read_bytes())
    model = ["--preset", "sdxl", "--base", str(file), "--base-config", str(root / "base")]
    model += ["--image-encoder", str(root / "encoder"), "--adapter", str(root / "adapter")]
    model += ["--vae", "base", "--device", "cpu", "--dtype", "fp32"]
    out = tmp_path / "out"
    args = ["generate", "--prompt", "a dog", "--height", "64", "--width", "64", "--steps", "2"]
    ok(run_console(*args, *model, "--seed", "0", "--out", str(out)))
    sidecar = out / "0001" / "image_0.json"
    data = json.loads(sidecar.read_text())
    assert data["model"]["base_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert data["model"]["settings"]["base_config"] == str(root / "base")
    ok(run_console("generate", "--request", str(sidecar), "--out", str(out)))
    same = [np.asarray(Image.open(out / run / "image_0.png")) for run in ("0001", "0002")]
    assert np.array_equal(*same)
    # other weights under the same name: not the model the sidecar was made with
    other = random_components(replace(ARCHITECTURES["tiny"], text_hidden=(32, 48)), seed=1)
    other.pop("image_encoder")
    other.pop("feature_extractor")
    write_sdxl_single_file(other, file)
    refused(
        run_console("generate", "--request", str(sidecar), "--out", str(out)),
        "--base",
        "not the checkpoint file the sidecar was made with",
    )
    assert sorted(p.name for p in out.iterdir()) == ["0001", "0002"]
    changed = run_console(
        "generate", "--request", str(sidecar), "--allow-model-change", "--out", str(out)
    )
    assert changed.returncode == 0 and "the image will differ" in changed.stderr
