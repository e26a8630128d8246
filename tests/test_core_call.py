"""The whole SDXL ``__call__`` contract on MSDiffusionXLPipeline (without subjects it must equal
StableDiffusionXLPipeline exactly, argument for argument), the callback contract, and a located
error for every bad value."""

import math
import re

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from msdiffusion import MSDiffusionXLPipeline, Subject
from msdiffusion.errors import GenerationError, InputError

pytestmark = pytest.mark.usefixtures("single_thread")

KW = dict(num_inference_steps=3, guidance_scale=7.5, output_type="np", height=64, width=64)
PROMPT = "a dog and a cat"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipes():
    from msdiffusion.models.adapter import MSAdapter
    from msdiffusion.testing.sdxl import adapter_kwargs, random_components

    plain = StableDiffusionXLPipeline(**random_components("tiny"))
    components = random_components("tiny")
    torch.manual_seed(0)
    adapter = MSAdapter.for_unet(components["unet"], **adapter_kwargs("tiny"))
    ours = MSDiffusionXLPipeline(**components, adapter=adapter)
    for p in (plain, ours):
        p.set_progress_bar_config(disable=True)
    return plain, ours


@pytest.fixture(scope="module")
def dog():
    rng = np.random.default_rng(1)
    return Subject(Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)), None, "dog")


@pytest.mark.parametrize(
    "extra",
    [
        dict(prompt_2="a cat in the snow", negative_prompt="blurry"),
        dict(guidance_rescale=0.7),
        dict(denoising_end=0.5, output_type="latent"),  # the refiner hand-off
        dict(clip_skip=1),
        dict(negative_original_size=(32, 32), negative_target_size=(48, 48)),
        dict(original_size=(128, 96), crops_coords_top_left=(8, 0), target_size=(64, 64)),
        dict(num_images_per_prompt=2),
    ],
    ids=[
        "prompt_2",
        "guidance_rescale",
        "denoising_end",
        "clip_skip",
        "negative_sizes",
        "sizes",
        "n",
    ],
)
def test_without_subjects_every_sdxl_argument_gives_sdxl_output(pipes, extra):
    plain, ours = pipes
    n = extra.get("num_images_per_prompt", 1)
    kwargs = {**KW, **extra}
    expected = plain(PROMPT, **kwargs, generator=[gen(k) for k in range(n)]).images
    got = ours(PROMPT, **kwargs, generator=[gen(k) for k in range(n)]).images
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    else:
        np.testing.assert_array_equal(got, expected)
    if "guidance_rescale" in extra or "clip_skip" in extra or "prompt_2" in extra:
        default = ours(PROMPT, **KW, generator=[gen(0)]).images
        assert np.abs(got - default).max() > 1e-4  # the argument is used


def test_denoising_end_runs_that_share_of_the_steps(pipes):
    _, ours = pipes
    calls = []
    handle = ours.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        ours(
            PROMPT, **{**KW, "num_inference_steps": 10, "output_type": "latent"}, denoising_end=0.5
        )
    finally:
        handle.remove()
    assert len(calls) == 5


def test_embeddings_instead_of_prompts_give_the_same_image(pipes, dog):
    _, ours = pipes
    subject = [Subject(dog.image, (0, 0, 0.5, 1), "dog")]
    embeds, negative, pooled, negative_pooled = ours.encode_prompt(
        PROMPT, device=torch.device("cpu"), negative_prompt="blurry"
    )
    expected = ours(PROMPT, subject, negative_prompt="blurry", generator=gen(), **KW).images
    got = ours(
        subjects=subject,
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        negative_prompt_embeds=negative,
        negative_pooled_prompt_embeds=negative_pooled,
        generator=gen(),
        **KW,
    ).images
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(InputError, match="phrase: needs the prompt text for auto layout"):
        ours(
            prompt_embeds=embeds,
            pooled_prompt_embeds=pooled,
            subjects=subject,
            mask_threshold=0.5,
            **KW,
        )
    with pytest.raises(InputError, match="pooled_prompt_embeds: is required"):
        ours(prompt_embeds=embeds, **KW)


def test_callback_gets_every_tensor_input_and_its_returns_are_applied(pipes, dog):
    _, ours = pipes
    subject = [Subject(dog.image, (0, 0, 0.5, 1), "dog")]
    names = list(ours._callback_tensor_inputs)
    assert {"add_text_embeds", "add_time_ids", "prompt_embeds", "latents"} <= set(names)
    seen = []

    def watch(pipe, i, t, tensors):
        seen.append(sorted(tensors))
        return {}

    base = ours(
        PROMPT,
        subject,
        generator=gen(),
        callback_on_step_end=watch,
        callback_on_step_end_tensor_inputs=names,
        **KW,
    ).images
    assert seen == [sorted(names)] * 3

    def zero_latents(pipe, i, t, tensors):
        return {"latents": torch.zeros_like(tensors["latents"])} if i == 2 else {}

    latents = ours(
        PROMPT,
        subject,
        generator=gen(),
        callback_on_step_end=zero_latents,
        **{**KW, "output_type": "latent"},
    ).images
    assert torch.equal(latents, torch.zeros_like(latents))

    def shift_time_ids(pipe, i, t, tensors):
        return {
            "add_time_ids": tensors["add_time_ids"] * 2,
            "add_text_embeds": tensors["add_text_embeds"],
        }

    shifted = ours(
        PROMPT,
        subject,
        generator=gen(),
        callback_on_step_end=shift_time_ids,
        callback_on_step_end_tensor_inputs=["add_time_ids", "add_text_embeds"],
        **KW,
    ).images
    assert np.abs(shifted - base).max() > 1e-4


def test_interrupt_stops_the_loop(pipes):
    _, ours = pipes
    calls = []
    handle = ours.unet.register_forward_hook(lambda *a: calls.append(1))

    def stop(pipe, i, t, tensors):
        pipe._interrupt = True
        return {}

    try:
        ours(PROMPT, callback_on_step_end=stop, **{**KW, "num_inference_steps": 5})
    finally:
        handle.remove()
    assert len(calls) == 1


def test_non_finite_latents_are_an_error_not_a_black_image(pipes):
    _, ours = pipes
    latents = torch.full((1, 4, 8, 8), math.nan)
    with pytest.raises(GenerationError, match="not finite"):
        ours(PROMPT, latents=latents, **KW)


BAD = [
    (dict(scale=1e30), "scale: must be a finite number >= 0.0 and <= 10.0 (got 1e+30)"),
    (dict(scale=True), "scale: must be a finite number"),
    (dict(scale="0.5"), "scale: must be a finite number"),
    (dict(height=0), "height: must be an integer >= 8 (got 0)"),
    (dict(width=True), "width: must be an integer"),
    (dict(height=60), "height: must be a positive multiple of 8 (got 60)"),
    (dict(guidance_scale="7.5"), "guidance_scale: must be a finite number"),
    (dict(guidance_scale=math.inf), "guidance_scale: must be a finite number"),
    (dict(num_inference_steps=True), "num_inference_steps: must be an integer"),
    (dict(num_inference_steps=2.0), "num_inference_steps: must be an integer"),
    (dict(mask_threshold=True), "mask_threshold: must be a finite number"),
    (dict(mask_threshold=1.0), "mask_threshold: must be a finite number >= 0.0 and < 1.0"),
    (dict(start_step=1.5), "start_step: must be an integer >= 0"),
    (dict(drop_grounding_tokens=1), "drop_grounding_tokens: must be true or false (got 1)"),
    (dict(denoising_end=1.0), "denoising_end: must be a finite number > 0.0 and < 1.0"),
    (dict(guidance_rescale=2.0), "guidance_rescale: must be a finite number"),
    (dict(clip_skip=5), "clip_skip: must be an integer >= 0 and <= 1 (got 5)"),
    (dict(eta="0"), "eta: must be a finite number"),
    (dict(num_images_per_prompt=0), "num_images_per_prompt: must be an integer >= 1"),
    (dict(output_type="jpg"), "output_type: must be one of pil, np, pt, latent"),
    (dict(control_image=Image.new("RGB", (64, 64))), "control_image: needs a controlnet"),
    (dict(latents=torch.zeros(1, 4, 16, 8)), "latents: must have shape (1, 4, 8, 8)"),
    (
        dict(latents=torch.zeros(1, 4, 8, 8, dtype=torch.float16)),
        "latents: must have the UNet's dtype torch.float32 (got torch.float16)",
    ),
    (dict(generator=[gen(), gen()]), "generator: needs one generator, or one per image (1)"),
    (dict(original_size=(64,)), "original_size: must be a pair of integers"),
    (dict(cross_attention_kwargs={"ms": 1}), 'cross_attention_kwargs: must be a dict without "ms"'),
    (dict(callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
    (dict(prompt_2=3), "prompt_2: must be a string or a non-empty list of strings"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_every_bad_value_names_argument_rule_and_value(pipes, kwargs, message):
    _, ours = pipes
    with pytest.raises(InputError, match=re.escape(message)) as info:
        ours(PROMPT, **{**KW, **kwargs})
    assert "(got " in str(info.value)  # the value, always


def test_bad_subject_values(pipes, dog):
    _, ours = pipes
    for scale in (True, "0.5", 11.0, math.nan):
        with pytest.raises(InputError, match=r"subject.scale: must be a finite number"):
            Subject(dog.image, (0, 0, 1, 1), "dog", scale=scale)
    with pytest.raises(InputError, match="subject.box: must be four numbers"):
        Subject(dog.image, (0, 0, True, 1), "dog")
    # a box-less subject under auto layout that starts after the last step would do nothing
    with pytest.raises(InputError, match=r"subjects\[0\].box: needs a box or a mask: .*step 4 "):
        ours("a dog", [dog], mask_threshold=0.5, start_step=4, **KW)
    with pytest.raises(InputError, match=r"after the last of the 2 steps"):
        ours(
            "a dog",
            [dog],
            mask_threshold=0.5,
            start_step=3,
            denoising_end=0.5,
            **{**KW, "num_inference_steps": 4},
        )
    ours("a dog", [dog], mask_threshold=0.5, start_step=3, **KW)  # reaches step 3 of 3: fine


def test_controlnet_needs_its_image(tiny_factory, make_adapter):
    from diffusers import ControlNetModel

    components = tiny_factory()
    controlnet = ControlNetModel.from_unet(
        components["unet"], conditioning_embedding_out_channels=(8, 8, 8, 8)
    )
    pipe = MSDiffusionXLPipeline(**components, controlnet=controlnet)
    with pytest.raises(InputError, match="control_image: is required with a controlnet"):
        pipe(PROMPT, **KW)
