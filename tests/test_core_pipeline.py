"""MSDiffusionXLPipeline end to end on tiny components: invariants and diffusers machinery."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLPipeline
from PIL import Image

from msdiffusion import MSDiffusionXLPipeline, Subject
from msdiffusion.errors import InputError

KW = dict(num_inference_steps=3, guidance_scale=7.5, output_type="np")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def refs():
    rng = np.random.default_rng(0)
    return [
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)) for i in range(3)
    ]


@pytest.fixture()
def pipes(tiny_factory, make_adapter):
    plain = StableDiffusionXLPipeline(**tiny_factory())
    components = tiny_factory()
    pipe = MSDiffusionXLPipeline(**components, adapter=make_adapter(components["unet"]))
    for p in (plain, pipe):
        p.set_progress_bar_config(disable=True)
    return plain, pipe


def test_no_subjects_or_scale_zero_is_exactly_plain_sdxl(pipes, refs):
    plain, pipe = pipes
    expected = plain("a dog and a cat", height=64, width=128, generator=gen(), **KW).images
    none = pipe("a dog and a cat", height=64, width=128, generator=gen(), **KW).images
    subjects = [Subject(refs[0], (0, 0, 0.5, 1), "dog"), Subject(refs[1], (0.5, 0, 1, 1), "cat")]
    zero = pipe(
        "a dog and a cat", subjects, scale=0.0, height=64, width=128, generator=gen(), **KW
    ).images
    with_subjects = pipe(
        "a dog and a cat", subjects, height=64, width=128, generator=gen(), **KW
    ).images
    assert np.array_equal(none, expected) and np.array_equal(zero, expected)
    assert np.abs(with_subjects - expected).max() > 1e-3


def test_batch_with_different_subject_counts_equals_one_by_one(pipes, refs):
    _, pipe = pipes
    a = [Subject(refs[0], (0, 0, 0.5, 1), "dog"), Subject(refs[1], (0.4, 0.2, 1, 1), "cat")]
    b = [Subject(refs[2], (0.2, 0.1, 0.8, 0.9), "hat")]
    prompts = ["a dog and a cat", "a hat on a table"]
    batch = pipe(
        prompts,
        [a, b],
        num_images_per_prompt=2,
        height=64,
        width=64,
        generator=[gen(s) for s in (0, 1, 2, 3)],
        **KW,
    ).images
    one = pipe(
        prompts[0],
        a,
        num_images_per_prompt=2,
        height=64,
        width=64,
        generator=[gen(0), gen(1)],
        **KW,
    ).images
    two = pipe(prompts[1], b, height=64, width=64, generator=gen(3), **KW).images
    np.testing.assert_allclose(batch[:2], one, atol=1e-4)
    np.testing.assert_allclose(batch[3:], two, atol=1e-4)


@pytest.mark.parametrize(
    "size,box,half", [((64, 128), (0, 0, 0.5, 1), "left"), ((128, 64), (0, 0, 1, 0.5), "top")]
)
def test_non_square_box_changes_only_its_half_at_every_cross_attention(
    pipes, refs, size, box, half
):
    from msdiffusion.models.attention import cross_attention_layers

    _, pipe = pipes
    seen = []

    def hook(module, args, kwargs, output):
        ms = kwargs.get("ms")
        if ms is None:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        plain = module.processor(module, hidden, kwargs["encoder_hidden_states"])
        h, w = ms.grid(hidden.shape[1])
        delta = (output - plain)[ms.cond_start :].abs().amax(-1).view(-1, h, w)  # (Bc, h, w)
        seen.append((delta, h, w))

    handles = [
        m.register_forward_hook(hook, with_kwargs=True)
        for m in cross_attention_layers(pipe.unet).values()
    ]
    try:
        pipe(
            "a dog",
            [Subject(refs[0], box, "dog")],
            height=size[0],
            width=size[1],
            generator=gen(),
            **KW,
        )
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen) == 3 * 7  # steps × cross-attention layers
    for delta, h, w in seen:
        inside = delta[:, :, : w // 2] if half == "left" else delta[:, : h // 2]
        outside = delta[:, :, w // 2 :] if half == "left" else delta[:, h // 2 :]
        assert inside.gt(0).all() and outside.eq(0).all()


def test_mask_equal_to_a_box_gives_the_box_output(pipes, refs):
    _, pipe = pipes
    mask = np.zeros((64, 128), dtype=np.uint8)
    mask[:, :64] = 255
    box = pipe(
        "a dog",
        [Subject(refs[0], (0, 0, 0.5, 1), "dog")],
        height=64,
        width=128,
        generator=gen(),
        **KW,
    ).images
    masked = pipe(
        "a dog",
        [Subject(refs[0], None, "dog", mask=Image.fromarray(mask))],
        height=64,
        width=128,
        generator=gen(),
        **KW,
    ).images
    assert np.array_equal(box, masked)
    with pytest.raises(InputError, match="aspect ratio"):
        pipe(
            "a dog",
            [Subject(refs[0], None, "dog", mask=Image.fromarray(mask))],
            height=64,
            width=64,
            **KW,
        )


def test_several_references_average_their_tokens(pipes, refs):
    _, pipe = pipes
    one = pipe(
        "a dog", [Subject(refs[0], (0, 0, 1, 1), "dog")], height=64, width=64, generator=gen(), **KW
    ).images
    twice = pipe(
        "a dog",
        [Subject([refs[0], refs[0]], (0, 0, 1, 1), "dog")],
        height=64,
        width=64,
        generator=gen(),
        **KW,
    ).images
    other = pipe(
        "a dog",
        [Subject([refs[0], refs[1]], (0, 0, 1, 1), "dog")],
        height=64,
        width=64,
        generator=gen(),
        **KW,
    ).images
    np.testing.assert_allclose(one, twice, atol=1e-5)
    assert np.abs(other - one).max() > 1e-4


def test_auto_layout(pipes, refs):
    _, pipe = pipes
    subjects = [Subject(refs[0], (0, 0, 0.5, 1), "dog"), Subject(refs[1], (0.5, 0, 1, 1), "cat")]
    boxes = pipe("a dog and a cat", subjects, height=64, width=64, generator=gen(), **KW).images
    late = pipe(
        "a dog and a cat",
        subjects,
        mask_threshold=0.5,
        start_step=10,
        height=64,
        width=64,
        generator=gen(),
        **KW,
    ).images
    early = pipe(
        "a dog and a cat",
        subjects,
        mask_threshold=0.5,
        start_step=1,
        height=64,
        width=64,
        generator=gen(),
        **KW,
    ).images
    assert np.array_equal(boxes, late)  # never reaches start_step: the boxes rule
    assert np.abs(early - boxes).max() > 1e-4
    boxless = [Subject(refs[0], None, "dog")]  # placed by the attention maps alone
    pipe("a dog", boxless, mask_threshold=0.3, start_step=1, height=64, width=64, **KW)
    with pytest.raises(InputError, match="must appear in the prompt"):
        pipe("a cat", [Subject(refs[0], (0, 0, 1, 1), "dog")], mask_threshold=0.5, **KW)
    with pytest.raises(InputError, match="needs a box or a mask"):
        pipe("a dog", boxless, height=64, width=64, **KW)


def test_drop_grounding_tokens_changes_output(pipes, refs):
    _, pipe = pipes
    s = [Subject(refs[0], (0, 0, 1, 1), "dog")]
    a = pipe("a dog", s, height=64, width=64, generator=gen(), **KW).images
    b = pipe(
        "a dog", s, drop_grounding_tokens=True, height=64, width=64, generator=gen(), **KW
    ).images
    assert np.abs(a - b).max() > 1e-5


def test_controlnet_sees_plain_text_states(tiny_factory, make_adapter, refs):
    components = tiny_factory()
    controlnet = ControlNetModel.from_unet(
        components["unet"], conditioning_embedding_out_channels=(8, 8, 8, 8)
    )
    pipe = MSDiffusionXLPipeline(
        **components, adapter=make_adapter(components["unet"]), controlnet=controlnet
    )
    pipe.set_progress_bar_config(disable=True)
    seen = []
    controlnet.register_forward_hook(
        lambda m, a, k, o: seen.append(
            (k["encoder_hidden_states"].shape, k.get("cross_attention_kwargs"))
        ),
        with_kwargs=True,
    )
    control = Image.new("RGB", (64, 64), (255, 255, 255))
    out = pipe(
        "a dog",
        [Subject(refs[0], (0, 0, 1, 1), "dog")],
        control_image=control,
        height=64,
        width=64,
        generator=gen(),
        **KW,
    ).images
    assert out.shape == (1, 64, 64, 3)
    assert seen and all(shape == (2, 77, 64) and kw is None for shape, kw in seen)
    with pytest.raises(InputError, match="control_image"):
        pipe("a dog", height=64, width=64, **KW)


def test_lora_loading_and_vae_slicing_work_with_subjects(
    tiny_factory, make_adapter, refs, tmp_path
):
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    donor = tiny_factory()["unet"]
    donor.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights=False,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    StableDiffusionXLPipeline.save_lora_weights(
        tmp_path, unet_lora_layers=get_peft_model_state_dict(donor)
    )
    components = tiny_factory()
    pipe = MSDiffusionXLPipeline(**components, adapter=make_adapter(components["unet"]))
    pipe.set_progress_bar_config(disable=True)
    s = [Subject(refs[0], (0, 0, 0.5, 1), "dog")]
    before = pipe(["a dog"] * 2, s, height=64, width=64, generator=[gen(), gen(1)], **KW).images
    pipe.load_lora_weights(tmp_path)
    pipe.vae.enable_slicing()
    after = pipe(["a dog"] * 2, s, height=64, width=64, generator=[gen(), gen(1)], **KW).images
    assert np.abs(after - before).max() > 1e-4
    assert not any("to_k_ip.lora" in name for name, _ in pipe.unet.named_modules())
    pipe.unload_lora_weights()
    restored = pipe(["a dog"] * 2, s, height=64, width=64, generator=[gen(), gen(1)], **KW).images
    np.testing.assert_allclose(restored, before, atol=1e-5)


def test_bad_sizes_and_subjects(pipes, refs):
    _, pipe = pipes
    with pytest.raises(InputError, match="height: must be a positive multiple of 8"):
        pipe("a dog", height=60, width=64, **KW)
    with pytest.raises(InputError, match="one list of subjects per prompt"):
        pipe(["a", "b"], [[Subject(refs[0], (0, 0, 1, 1), "dog")]], height=64, width=64, **KW)
    with pytest.raises(InputError, match="subject.box: needs x0 < x1"):
        Subject(refs[0], (0.5, 0, 0.2, 1), "dog")
    with pytest.raises(InputError, match="subject.phrase: must be a non-empty string"):
        Subject(refs[0], (0, 0, 1, 1), " ")


def test_pipeline_save_and_from_pretrained_round_trip(pipes, refs, tmp_path):
    from diffusers import DPMSolverMultistepScheduler
    from safetensors import safe_open

    _, pipe = pipes
    s = [Subject(refs[0], (0.2, 0, 0.8, 1), "dog")]
    pipe.save_pretrained(tmp_path / "saved")
    (unet_file,) = (tmp_path / "saved" / "unet").glob("*.safetensors")
    with safe_open(str(unet_file), "pt") as f:
        assert not any("processor" in k for k in f.keys())  # the UNet is saved clean
    loaded = MSDiffusionXLPipeline.from_pretrained(tmp_path / "saved")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.adapter is not None and loaded.adapter.is_installed(loaded.unet)
    a = pipe("a dog", s, height=64, width=64, generator=gen(), **KW).images
    b = loaded("a dog", s, height=64, width=64, generator=gen(), **KW).images
    np.testing.assert_array_equal(a, b)
    loaded.scheduler = DPMSolverMultistepScheduler.from_config(loaded.scheduler.config)
    c = loaded("a dog", s, height=64, width=64, generator=gen(), **KW).images
    assert c.shape == a.shape and np.abs(c - a).max() > 0  # another scheduler runs
