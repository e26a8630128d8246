"""Image-to-image and inpainting with subjects on tiny components: the source comes back at
strength 0, plain diffusers outputs without subjects, the source outside the inpainting mask,
from_pipe between the three pipelines, and the refiner hand-off."""

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from msdiffusion import (
    MSDiffusionXLImg2ImgPipeline,
    MSDiffusionXLInpaintPipeline,
    MSDiffusionXLPipeline,
    Subject,
)
from msdiffusion.errors import InputError

pytestmark = pytest.mark.usefixtures("single_thread")

KW = dict(num_inference_steps=4, guidance_scale=7.5, output_type="np")
PROMPT = "a dog and a cat in the garden"


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def quiet(*pipes):
    for p in pipes:
        p.set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8))
    refs = [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]
    mask = np.zeros((64, 128), np.uint8)
    mask[:, 64:] = 255  # repaint the right half
    return source, refs, Image.fromarray(mask)


@pytest.fixture()
def pipes(tiny_factory, make_adapter):
    """(ours: text-to-image, img2img, inpaint sharing components; diffusers' img2img, inpaint)"""
    components = tiny_factory()
    t2i = MSDiffusionXLPipeline(**components, adapter=make_adapter(components["unet"]))
    i2i = MSDiffusionXLImg2ImgPipeline.from_pipe(t2i)
    inpaint = MSDiffusionXLInpaintPipeline.from_pipe(t2i)
    plain_i2i = StableDiffusionXLImg2ImgPipeline(**tiny_factory())
    plain_inpaint = StableDiffusionXLInpaintPipeline.from_pipe(plain_i2i)
    return quiet(t2i, i2i, inpaint, plain_i2i, plain_inpaint)


def right_half(refs):
    return [
        Subject(refs[0], (0.5, 0.0, 0.75, 1.0), "dog"),
        Subject(refs[1], (0.7, 0.2, 1.0, 0.9), "cat"),
    ]


def test_strength_zero_returns_the_source(pipes, images):
    _, i2i, inpaint, _, _ = pipes
    source, refs, mask = images
    subjects = right_half(refs)
    for pipe, extra in ((i2i, {}), (inpaint, {"mask_image": mask})):
        out = pipe(PROMPT, subjects, image=source, strength=0.0, output_type="pil", **extra)
        assert np.array_equal(np.asarray(out.images[0]), np.asarray(source))
        # strength × steps < 1 runs no step either; np output in [0, 1]
        out = pipe(
            PROMPT,
            subjects,
            image=source,
            strength=0.1,
            num_inference_steps=4,
            num_images_per_prompt=2,
            output_type="np",
            **extra,
        )
        assert out.images.shape == (2, 64, 128, 3)
        np.testing.assert_allclose(out.images[1], np.asarray(source) / 255.0, atol=1e-6)


def test_no_subjects_or_scale_zero_equals_diffusers(pipes, images):
    _, i2i, inpaint, plain_i2i, plain_inpaint = pipes
    source, refs, mask = images
    subjects = right_half(refs)
    cases = [
        (i2i, plain_i2i, {"strength": 0.6}),
        (i2i, plain_i2i, {"denoising_start": 0.5}),
        (inpaint, plain_inpaint, {"mask_image": mask, "strength": 0.8}),
    ]
    for ours, plain, extra in cases:
        size = {"height": 64, "width": 128} if "mask_image" in extra else {}
        expected = plain(PROMPT, image=source, generator=gen(), **size, **extra, **KW).images
        none = ours(PROMPT, image=source, generator=gen(), **extra, **KW).images
        zero = ours(PROMPT, subjects, scale=0.0, image=source, generator=gen(), **extra, **KW)
        with_subjects = ours(PROMPT, subjects, image=source, generator=gen(), **extra, **KW)
        assert np.array_equal(none, expected) and np.array_equal(zero.images, expected)
        assert np.abs(with_subjects.images - expected).max() > 1e-3


def test_outside_the_mask_is_plain_inpainting(pipes, images):
    _, _, inpaint, _, plain_inpaint = pipes
    source, refs, mask = images
    latent = dict(KW, output_type="latent", strength=0.9)
    plain = plain_inpaint(
        PROMPT, image=source, mask_image=mask, height=64, width=128, generator=gen(), **latent
    ).images
    ours = inpaint(
        PROMPT, right_half(refs), image=source, mask_image=mask, generator=gen(), **latent
    ).images  # (1, 4, 8, 16): the mask covers latent columns 8…15
    assert torch.equal(ours[..., :8], plain[..., :8])
    assert (ours[..., 8:] - plain[..., 8:]).abs().max() > 1e-3


def test_inpainting_regions_must_lie_in_the_mask(pipes, images):
    _, _, inpaint, _, _ = pipes
    source, refs, mask = images
    left = Subject(refs[0], (0.3, 0.0, 0.8, 1.0), "dog")
    with pytest.raises(InputError, match=r"subjects\[0\]\.box: must lie inside the repaint"):
        inpaint(PROMPT, [left], image=source, mask_image=mask, **KW)
    region = np.zeros((64, 128), bool)
    region[10:40, 20:60] = True
    masked = Subject(refs[0], None, "dog", mask=region)
    with pytest.raises(InputError, match=r"subjects\[1\]\.mask: .* 24 of its 24 latent cells"):
        inpaint(PROMPT, [right_half(refs)[0], masked], image=source, mask_image=mask, **KW)
    with pytest.raises(InputError, match="padding_mask_crop: cannot go with subjects"):
        inpaint(PROMPT, right_half(refs), image=source, mask_image=mask, padding_mask_crop=8, **KW)
    with pytest.raises(InputError, match="mask_image: is required"):
        inpaint(PROMPT, image=source, **KW)


def test_bad_editing_arguments_are_named(pipes, images):
    _, i2i, _, _, _ = pipes
    source, refs, _ = images
    with pytest.raises(InputError, match="image: is required"):
        i2i(PROMPT, **KW)
    with pytest.raises(InputError, match="strength"):
        i2i(PROMPT, image=source, strength=1.5, **KW)
    with pytest.raises(InputError, match="image: must be a PIL image"):
        i2i(PROMPT, image="picture.png", **KW)
    with pytest.raises(InputError, match="denoising_start"):
        i2i(PROMPT, image=source, denoising_start=1.0, **KW)
    with pytest.raises(InputError, match="ip_adapter_image: needs an IP-Adapter"):
        i2i(PROMPT, image=source, ip_adapter_image=source, **KW)
    # auto layout counts the steps that run: strength 0.5 of 4 runs 2
    boxless = Subject(refs[0], None, "dog")
    with pytest.raises(InputError, match="after the last of the 2 steps"):
        i2i(PROMPT, [boxless], image=source, strength=0.5, mask_threshold=0.5, start_step=3, **KW)


def test_img2img_batch_with_different_subjects_equals_one_by_one(pipes, images):
    _, i2i, _, _, _ = pipes
    source, refs, _ = images
    a, b = right_half(refs), [Subject(refs[1], (0.0, 0.1, 0.4, 0.9), "cat")]
    prompts = [PROMPT, "a cat on a wall"]
    batch = i2i(prompts, [a, b], image=source, strength=0.7, generator=[gen(0), gen(1)], **KW)
    one = i2i(prompts[0], a, image=source, strength=0.7, generator=gen(0), **KW).images
    two = i2i(prompts[1], b, image=source, strength=0.7, generator=gen(1), **KW).images
    np.testing.assert_allclose(batch.images, np.concatenate([one, two]), atol=1e-5)


def test_from_pipe_between_all_three_keeps_the_adapter(pipes, images, tiny_factory, make_adapter):
    t2i, i2i, inpaint, _, _ = pipes
    source, refs, _ = images
    for pipe in (i2i, inpaint, MSDiffusionXLPipeline.from_pipe(inpaint)):
        assert pipe.adapter is t2i.adapter and pipe.unet is t2i.unet
        assert pipe.adapter.is_installed(pipe.unet)
    components = tiny_factory()  # the same weights, built directly
    direct = MSDiffusionXLImg2ImgPipeline(**components, adapter=make_adapter(components["unet"]))
    quiet(direct)
    subjects = right_half(refs)
    expected = direct(PROMPT, subjects, image=source, generator=gen(), **KW).images
    np.testing.assert_array_equal(
        i2i(PROMPT, subjects, image=source, generator=gen(), **KW).images, expected
    )


def tiny_refiner(tiny_factory):
    """SDXL's refiner layout on tiny components: the second text encoder only, aesthetic score
    in the time ids (5 of them, not 6), cross-attention on that encoder's width."""
    c = tiny_factory(seed=1)
    config = dict(c["unet"].config)
    width = c["text_encoder_2"].config.hidden_size
    time_dim = config["addition_time_embed_dim"]
    config.update(
        cross_attention_dim=width, projection_class_embeddings_input_dim=5 * time_dim + width
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        unet = UNet2DConditionModel.from_config(config).eval()
    return StableDiffusionXLImg2ImgPipeline(
        vae=c["vae"],
        text_encoder=None,
        text_encoder_2=c["text_encoder_2"],
        tokenizer=None,
        tokenizer_2=c["tokenizer_2"],
        unet=unet,
        scheduler=c["scheduler"],
        requires_aesthetics_score=True,
    )


def test_refiner_hand_off(pipes, images, tiny_factory):
    t2i, i2i, _, _, _ = pipes
    _, refs, _ = images
    (refiner,) = quiet(tiny_refiner(tiny_factory))
    (plain,) = quiet(StableDiffusionXLPipeline(**tiny_factory()))
    base = dict(height=64, width=128, num_inference_steps=6, guidance_scale=7.5)
    cut = dict(denoising_end=0.6, output_type="latent")
    expected = plain(PROMPT, generator=gen(), **base, **cut).images
    ours = t2i(PROMPT, generator=gen(), **base, **cut).images
    assert torch.equal(ours, expected)
    with_subjects = t2i(PROMPT, right_half(refs), generator=gen(), **base, **cut).images

    def refine(latents):
        return refiner(
            PROMPT,
            image=latents,
            denoising_start=0.6,
            num_inference_steps=6,
            generator=gen(1),
            output_type="np",
        ).images

    refined, refined_subjects = refine(ours), refine(with_subjects)
    assert refined.shape == (1, 64, 128, 3) and np.isfinite(refined_subjects).all()
    np.testing.assert_array_equal(refined, refine(expected))
    assert np.abs(refined_subjects - refined).max() > 1e-3
    # the base's own image-to-image pipeline continues the subjects as a second stage
    second = i2i(
        PROMPT,
        right_half(refs),
        image=with_subjects,
        denoising_start=0.6,
        num_inference_steps=6,
        generator=gen(1),
        output_type="np",
    ).images
    assert second.shape == (1, 64, 128, 3) and np.isfinite(second).all()


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("MSDiffusionXLPipeline", "StableDiffusionXLPipeline"),
        ("MSDiffusionXLImg2ImgPipeline", "StableDiffusionXLImg2ImgPipeline"),
        ("MSDiffusionXLInpaintPipeline", "StableDiffusionXLInpaintPipeline"),
    ],
)
def test_each_call_takes_every_argument_of_the_diffusers_call(ours, theirs):
    """The typed signatures list diffusers' arguments again (for readers and type checkers): a
    diffusers upgrade that adds, drops or re-defaults one fails here, naming it."""
    import inspect

    import diffusers

    import msdiffusion
    from msdiffusion.pipelines.editing import SUBJECT_ARGUMENTS

    def arguments(cls):
        return {
            name: p.default
            for name, p in inspect.signature(cls.__call__).parameters.items()
            if p.kind is not inspect.Parameter.VAR_KEYWORD  # diffusers' deprecated callbacks
        }

    mine = arguments(getattr(msdiffusion, ours))
    base = arguments(getattr(diffusers, theirs))
    extra = set(SUBJECT_ARGUMENTS) | ({"control_image", "controlnet_conditioning_scale"})
    assert set(base) - set(mine) == set()
    assert set(mine) - set(base) <= extra
    # the released model's defaults (30 steps, guidance 7.5) and an immutable tensor-input default
    released = {"num_inference_steps": 30, "guidance_scale": 7.5}
    differ = {k: (mine[k], base[k]) for k in base if mine[k] != base[k]}
    for name, (value, theirs_value) in differ.items():
        if name == "callback_on_step_end_tensor_inputs":
            assert list(value) == list(theirs_value)
        else:
            assert released.get(name) == value, (name, value, theirs_value)
