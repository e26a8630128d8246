"""An IP-Adapter on MSDiffusionXLPipeline (``pipe.load_ip_adapter``): a call without subjects
equals StableDiffusionXLPipeline's with the same IP-Adapter; subjects with it, or its inputs
without it, are refused with what to do — the MS-Diffusion processors have no IP-Adapter branch,
so neither can silently drop the other."""

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image

from msdiffusion import MSDiffusionXLPipeline, Subject
from msdiffusion.errors import InputError

pytestmark = pytest.mark.usefixtures("single_thread")

KW = dict(num_inference_steps=2, guidance_scale=7.5, output_type="np", height=64, width=64)
PROMPT = "a dog"


def gen():
    return torch.Generator().manual_seed(0)


def random_ip_adapter(unet, image_encoder, tokens: int = 4) -> dict:
    """An IP-Adapter state dict in the released layout for ``unet`` (random weights): the image
    projection, and ``{i}.to_k_ip`` / ``{i}.to_v_ip`` at the odd indices of the cross-attention
    processors, in ``attn_processors`` order."""
    g = torch.Generator().manual_seed(7)
    cross = unet.config.cross_attention_dim
    embed = image_encoder.config.projection_dim
    state: dict = {
        "image_proj": {
            "proj.weight": torch.randn(cross * tokens, embed, generator=g) * 0.2,
            "proj.bias": torch.zeros(cross * tokens),
            "norm.weight": torch.ones(cross),
            "norm.bias": torch.zeros(cross),
        },
        "ip_adapter": {},
    }
    index = 1
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            inner = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
            for key in ("to_k_ip", "to_v_ip"):
                weight = torch.randn(inner, cross, generator=g) * 0.2
                state["ip_adapter"][f"{index}.{key}.weight"] = weight
            index += 2
    return state


@pytest.fixture()
def pipes(tiny_factory, make_adapter):
    plain = StableDiffusionXLPipeline(**tiny_factory())
    components = tiny_factory()
    ours = MSDiffusionXLPipeline(**components, adapter=make_adapter(components["unet"]))
    for p in (plain, ours):
        p.set_progress_bar_config(disable=True)
    return plain, ours


@pytest.fixture(scope="module")
def picture():
    rng = np.random.default_rng(2)
    return Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))


def test_an_ip_adapter_runs_as_in_sdxl_and_gives_way_back_to_the_subjects(pipes, picture):
    plain, ours = pipes
    adapter = ours.adapter
    dog = [Subject(picture, (0, 0, 0.5, 1), "dog")]
    with_subjects = ours(PROMPT, dog, generator=gen(), **KW).images
    with pytest.raises(InputError, match=r"ip_adapter_image: needs an IP-Adapter: .*load_ip_adapt"):
        ours(PROMPT, ip_adapter_image=picture, **KW)

    for p in (plain, ours):
        p.load_ip_adapter(random_ip_adapter(p.unet, p.image_encoder), None, None)
    expected = plain(PROMPT, ip_adapter_image=picture, generator=gen(), **KW).images
    got = ours(PROMPT, ip_adapter_image=picture, generator=gen(), **KW).images
    np.testing.assert_array_equal(got, expected)
    without = plain(PROMPT, ip_adapter_image=Image.new("RGB", (40, 40)), generator=gen(), **KW)
    assert np.abs(without.images - expected).max() > 1e-4  # the IP-Adapter image is used

    with pytest.raises(InputError, match=r"subjects: cannot go with an IP-Adapter: .*unload_ip"):
        ours(PROMPT, dog, ip_adapter_image=picture, **KW)
    with pytest.raises(InputError, match=r"ip_adapter_image: is required while an IP-Adapter"):
        ours(PROMPT, **KW)
    ours.attach_adapter(ours.adapter)  # the MS-Diffusion processors over the IP-Adapter's
    with pytest.raises(InputError, match=r"ip_adapter_image: needs the IP-Adapter's attention"):
        ours(PROMPT, ip_adapter_image=picture, **KW)
    ours.attach_adapter(None)  # gives the IP-Adapter's processors back
    np.testing.assert_array_equal(
        ours(PROMPT, ip_adapter_image=picture, generator=gen(), **KW).images, expected
    )

    ours.unload_ip_adapter()
    with pytest.raises(InputError, match="subjects: need an MS-Diffusion adapter"):
        ours(PROMPT, dog, **KW)
    ours.attach_adapter(adapter)  # and the subjects are back, as before the IP-Adapter
    np.testing.assert_allclose(ours(PROMPT, dog, generator=gen(), **KW).images, with_subjects)
    ours.attach_adapter(None)
    assert not any(p is None for p in ours.unet.attn_processors.values())


def test_ip_adapter_embeddings_instead_of_images(pipes, picture):
    _, ours = pipes
    ours.load_ip_adapter(random_ip_adapter(ours.unet, ours.image_encoder), None, None)
    expected = ours(PROMPT, ip_adapter_image=picture, generator=gen(), **KW).images
    (embeds,) = ours.prepare_ip_adapter_image_embeds(picture, None, ours.device, 1, True)
    got = ours(PROMPT, ip_adapter_image_embeds=[embeds], generator=gen(), **KW).images
    np.testing.assert_array_equal(got, expected)
    with pytest.raises(InputError, match="give ip_adapter_image or ip_adapter_image_embeds"):
        ours(PROMPT, ip_adapter_image=picture, ip_adapter_image_embeds=[embeds], **KW)
    with pytest.raises(InputError, match="must be a list of 3-D or 4-D tensors"):
        ours(PROMPT, ip_adapter_image_embeds=embeds, **KW)
