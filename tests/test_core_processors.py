"""The adapter's processors against every diffusers way of changing them, and a UNet that stays a
plain SDXL UNet while the adapter is attached (state dict, ControlNet, saving, offload)."""

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionXLPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from PIL import Image
from safetensors import safe_open

from msdiffusion import MSDiffusionXLPipeline, Subject
from msdiffusion.errors import InputError
from msdiffusion.models.attention import MSAttnProcessor

pytestmark = pytest.mark.usefixtures("single_thread")

KW = dict(num_inference_steps=2, guidance_scale=7.5, output_type="np", height=64, width=64)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def subjects():
    rng = np.random.default_rng(0)
    refs = [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(2)]
    return [Subject(refs[0], (0, 0, 0.6, 1), "dog"), Subject(refs[1], (0.4, 0, 1, 1), "cat")]


@pytest.fixture()
def pipe(tiny_factory, make_adapter):
    components = tiny_factory()
    p = MSDiffusionXLPipeline(**components, adapter=make_adapter(components["unet"]))
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe, subjects, **kw):
    return pipe("a dog and a cat", subjects, generator=gen(), **{**KW, **kw}).images


def ours(unet):
    return all(isinstance(p, MSAttnProcessor) for p in unet.attn_processors.values())


def test_the_unet_stays_plain_sdxl(pipe, tiny_factory, tmp_path):
    plain = tiny_factory()["unet"]
    assert ours(pipe.unet)
    assert list(pipe.unet.state_dict()) == list(plain.state_dict())
    count = sum(p.numel() for p in pipe.unet.parameters())
    assert count == sum(p.numel() for p in plain.parameters())
    controlnet = ControlNetModel.from_unet(pipe.unet)  # strict state-dict copies
    assert isinstance(controlnet, ControlNetModel)
    pipe.unet.save_pretrained(tmp_path / "unet")
    plain.save_pretrained(tmp_path / "plain")
    keys = []
    for folder in ("unet", "plain"):
        (file,) = (tmp_path / folder).glob("*.safetensors")
        with safe_open(str(file), "pt") as f:
            keys.append(sorted(f.keys()))
    assert keys[0] == keys[1]
    reloaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert not ours(reloaded)


def test_installed_is_read_from_the_unet_and_a_replaced_processor_is_caught(pipe, subjects):
    adapter = pipe.adapter
    before = run(pipe, subjects)
    pipe.unet.set_attention_slice("auto")  # on the UNet itself: diffusers' sliced processors
    assert not adapter.is_installed(pipe.unet)
    assert run(pipe, None).shape == before.shape  # plain SDXL still runs
    with pytest.raises(InputError, match=r"subjects: .*attach_adapter.*SlicedAttnProcessor"):
        run(pipe, subjects)
    pipe.attach_adapter(adapter)  # what the error says
    assert adapter.is_installed(pipe.unet)
    np.testing.assert_allclose(run(pipe, subjects), before, atol=1e-5)
    # another UNet of the same architecture: installed on one says nothing about the other
    other = UNet2DConditionModel.from_config(pipe.unet.config)
    assert not adapter.is_installed(other)
    adapter.install(other)
    assert adapter.is_installed(other) and adapter.is_installed(pipe.unet)
    adapter.uninstall(other)
    assert all(isinstance(p, AttnProcessor2_0) for p in other.attn_processors.values())


def test_uninstall_restores_what_was_there_through_two_installs(pipe, make_adapter):
    unet, first = pipe.unet, pipe.adapter
    first.uninstall(unet)
    unet.set_attention_slice(2)
    sliced = {k: type(p) for k, p in unet.attn_processors.items()}
    first.install(unet)
    second = make_adapter(unet, seed=1)
    second.install(unet)  # over the first: keeps the original processors, not the first's
    assert not first.is_installed(unet) and second.is_installed(unet)
    assert {p.slice_size for p in unet.attn_processors.values()} <= {1, 2}  # sliced kept
    with pytest.raises(InputError, match="not installed"):
        first.uninstall(unet)
    second.uninstall(unet)
    assert {k: type(p) for k, p in unet.attn_processors.items()} == sliced


@pytest.mark.parametrize("slice_size", ["auto", "max", 1])
def test_attention_slicing_keeps_the_subjects(pipe, subjects, slice_size):
    before = run(pipe, subjects)
    pipe.enable_attention_slicing(slice_size)
    assert pipe.adapter.is_installed(pipe.unet)
    assert any(p.slice_size is not None for p in pipe.unet.attn_processors.values())
    np.testing.assert_allclose(run(pipe, subjects), before, atol=1e-5)
    pipe.disable_attention_slicing()
    assert pipe.adapter.is_installed(pipe.unet)
    assert all(p.slice_size is None for p in pipe.unet.attn_processors.values())
    np.testing.assert_allclose(run(pipe, subjects), before, atol=1e-5)
    with pytest.raises(InputError, match="slice_size"):
        pipe.enable_attention_slicing(64)  # more heads than any layer has


def test_fused_projections_keep_the_subjects(pipe, subjects):
    before = run(pipe, subjects)
    pipe.fuse_qkv_projections()
    assert pipe.adapter.is_installed(pipe.unet)
    assert all(p.fused for p in pipe.unet.attn_processors.values())
    np.testing.assert_allclose(run(pipe, subjects), before, atol=1e-5)
    with torch.no_grad():  # the fused weights are the ones used: change them, the output moves
        for module in pipe.unet.modules():
            if hasattr(module, "to_kv"):
                module.to_kv.weight.mul_(1.5)
    assert np.abs(run(pipe, subjects) - before).max() > 1e-4
    pipe.unfuse_qkv_projections()
    assert pipe.adapter.is_installed(pipe.unet)
    assert not any(p.fused for p in pipe.unet.attn_processors.values())
    np.testing.assert_allclose(run(pipe, subjects), before, atol=1e-5)


def test_xformers_and_default_processors_are_refused_with_what_to_do(pipe):
    processors = dict(pipe.unet.attn_processors)
    with pytest.raises(
        InputError, match="enable_xformers_memory_efficient_attention: would replace"
    ):
        pipe.enable_xformers_memory_efficient_attention()
    with pytest.raises(ValueError, match=r"uninstall the adapter first .*attach_adapter\(None\)"):
        pipe.unet.set_default_attn_processor()
    assert dict(pipe.unet.attn_processors) == processors
    pipe.disable_xformers_memory_efficient_attention()  # harmless: ours stay
    assert dict(pipe.unet.attn_processors) == processors
    pipe.attach_adapter(None)  # then diffusers' default works
    pipe.unet.set_default_attn_processor()
    assert not ours(pipe.unet)


def _offloaded(tiny_factory, make_adapter, mode):
    components = tiny_factory()
    pipe = MSDiffusionXLPipeline(**components, adapter=make_adapter(components["unet"]))
    pipe.set_progress_bar_config(disable=True)
    if mode == "model":
        pipe.enable_model_cpu_offload(device="cpu")  # the CPU standing in for the accelerator
    elif mode == "sequential":  # weights on the meta device until each module runs
        pipe.enable_sequential_cpu_offload(device="cpu")
    return pipe


def test_model_offload_keeps_the_output_and_no_module_is_shared(
    tiny_factory, make_adapter, subjects
):
    plain = run(_offloaded(tiny_factory, make_adapter, None), subjects)
    pipe = _offloaded(tiny_factory, make_adapter, "model")
    owners: dict[int, str] = {}
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            for p in component.parameters():
                assert owners.setdefault(id(p), name) == name  # one component per weight
    hooked = {n for n, m in pipe.components.items() if hasattr(m, "_hf_hook")}
    assert {"adapter", "unet", "image_encoder", "text_encoder", "vae"} <= hooked
    np.testing.assert_array_equal(run(pipe, subjects), plain)


def test_sequential_offload_keeps_the_output(tiny_factory, make_adapter, subjects):
    plain = run(_offloaded(tiny_factory, make_adapter, None), subjects)
    pipe = _offloaded(tiny_factory, make_adapter, "sequential")
    assert pipe.adapter.dummy_tokens.device.type == "meta"
    try:
        out = run(pipe, subjects)
    except TypeError as err:  # accelerate re-wraps a torch 2.13 Parameter.to("meta") result
        if "new() received an invalid combination" not in str(err):
            raise
        pytest.xfail("accelerate's sequential offload fails on this torch for plain SDXL too")
    np.testing.assert_allclose(out, plain, atol=1e-5)


def test_from_pipe_both_ways(tiny_factory, make_adapter, subjects):
    components = tiny_factory()
    encoder = components.pop("image_encoder")
    components.pop("feature_extractor")
    sdxl = StableDiffusionXLPipeline(**components)
    sdxl.set_progress_bar_config(disable=True)
    plain = sdxl("a dog and a cat", generator=gen(), **KW).images
    adapter = make_adapter(components["unet"])
    ms = MSDiffusionXLPipeline.from_pipe(sdxl, image_encoder=encoder, adapter=adapter)
    ms.set_progress_bar_config(disable=True)
    assert ms.unet is sdxl.unet and adapter.is_installed(ms.unet)
    assert ms.feature_extractor is not None
    with_subjects = run(ms, subjects)
    assert np.abs(with_subjects - plain).max() > 1e-3
    np.testing.assert_array_equal(run(ms, None), plain)
    back = StableDiffusionXLPipeline.from_pipe(ms)
    back.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(back("a dog and a cat", generator=gen(), **KW).images, plain)
