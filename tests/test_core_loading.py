"""Loading from anywhere: our adapter format on the hub (subfolder, revision, local_files_only),
``pipe.load_ms_adapter`` for both formats, a saved pipeline's adapter found on the hub, one
loading path for inference and training, and offline-first failures that list every missing
part at once. The hub is a local cache laid out as huggingface_hub lays it out (offline)."""

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msdiffusion import MSAdapter, MSDiffusionXLPipeline, Subject
from msdiffusion.errors import InputError, ModelNotAvailableError
from msdiffusion.models.convert import save_original_checkpoint
from msdiffusion.testing.sdxl import adapter_kwargs

pytestmark = pytest.mark.usefixtures("single_thread")

KW = dict(num_inference_steps=2, guidance_scale=7.5, output_type="np", height=64, width=64)


def publish(folder: Path, cache: Path, repo: str, sha: str, ref: str = "main", under: str = ""):
    """Put ``folder`` into the hub cache as commit ``sha`` of ``repo`` (branch ``ref``)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    target = root / "snapshots" / sha / under
    shutil.copytree(folder, target, dirs_exist_ok=True)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / ref).write_text(sha)


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture()
def unet(tiny_factory):
    return tiny_factory()["unet"]


def test_our_format_from_the_hub_with_subfolder_and_revision(unet, make_adapter, tmp_path):
    cache = tmp_path / "cache"
    first, second = make_adapter(unet, seed=1), make_adapter(unet, seed=2)
    first.save_pretrained(tmp_path / "a1")
    second.save_pretrained(tmp_path / "a2")
    publish(tmp_path / "a1", cache, "me/ms", "1" * 40, "main", under="adapters/x")
    publish(tmp_path / "a2", cache, "me/ms", "2" * 40, "v2", under="adapters/x")
    main = MSAdapter.from_pretrained("me/ms", subfolder="adapters/x", cache_dir=cache)
    v2 = MSAdapter.from_pretrained(
        "me/ms", subfolder="adapters/x", revision="v2", cache_dir=cache, local_files_only=True
    )
    by_sha = MSAdapter.from_pretrained(
        "me/ms", subfolder="adapters/x", revision="2" * 40, cache_dir=cache
    )
    assert same(main, first) and same(v2, second) and same(by_sha, second)
    with pytest.raises(ModelNotAvailableError, match="hf download me/ms adapters/y/adapter"):
        MSAdapter.from_pretrained("me/ms", subfolder="adapters/y", cache_dir=cache)
    with pytest.raises(InputError, match="not an adapter loading option"):
        MSAdapter.from_pretrained("me/ms", cache_dir=cache, subfoldr="adapters/x")


def test_load_ms_adapter_in_one_call_for_both_formats(tiny_factory, make_adapter, tmp_path):
    cache = tmp_path / "cache"
    components = tiny_factory()
    pipe = MSDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    reference = make_adapter(components["unet"], seed=3)
    reference.save_pretrained(tmp_path / "ours")
    publish(tmp_path / "ours", cache, "me/ours", "3" * 40)
    (tmp_path / "released").mkdir()
    save_original_checkpoint(
        reference, components["unet"], tmp_path / "released" / "ms_adapter.bin"
    )
    publish(tmp_path / "released", cache, "me/released", "4" * 40)
    dog = [Subject(Image.new("RGB", (32, 32), (200, 90, 30)), (0, 0, 0.5, 1), "dog")]
    with pytest.raises(InputError, match="load_ms_adapter"):
        pipe("a dog", dog, **KW)
    outputs = []
    tiny = adapter_kwargs("tiny")  # the released format carries no hyper-parameters
    for source, kwargs in (
        ("me/ours", {}),
        ("me/released", {"weight_name": "ms_adapter.bin", **tiny}),
        (str(tmp_path / "ours"), {}),
        (str(tmp_path / "released" / "ms_adapter.bin"), tiny),
    ):
        adapter = pipe.load_ms_adapter(source, cache_dir=cache, **kwargs)
        assert (
            pipe.adapter is adapter and adapter.is_installed(pipe.unet) and same(adapter, reference)
        )
        outputs.append(pipe("a dog", dog, generator=torch.Generator().manual_seed(0), **KW).images)
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])
    # the released repository without weight_name: ours is looked for first, then ms_adapter.bin
    released = MSAdapter.load("me/released", pipe.unet, hparams=tiny, cache_dir=cache)
    assert same(released, reference)


def test_from_pretrained_finds_a_saved_pipelines_adapter_on_the_hub(
    tiny_factory, make_adapter, tmp_path
):
    cache = tmp_path / "cache"
    components = tiny_factory()
    pipe = MSDiffusionXLPipeline(**components, adapter=make_adapter(components["unet"], seed=5))
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(tmp_path / "saved")
    publish(tmp_path / "saved", cache, "me/saved", "5" * 40)
    loaded = MSDiffusionXLPipeline.from_pretrained("me/saved", cache_dir=cache)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.adapter is not None and loaded.adapter.is_installed(loaded.unet)
    assert same(loaded.adapter, pipe.adapter)
    dog = [Subject(Image.new("RGB", (32, 32), (20, 90, 200)), (0.2, 0, 1, 1), "dog")]
    kw = dict(generator=torch.Generator().manual_seed(0), **KW)
    np.testing.assert_array_equal(
        loaded("a dog", dog, **kw).images,
        pipe("a dog", dog, **{**kw, "generator": torch.Generator().manual_seed(0)}).images,
    )
    # an SDXL repository has no adapter: none is looked for, and none comes
    plain = MSDiffusionXLPipeline(**tiny_factory())
    plain.save_pretrained(tmp_path / "plain")
    publish(tmp_path / "plain", cache, "me/plain", "6" * 40)
    assert MSDiffusionXLPipeline.from_pretrained("me/plain", cache_dir=cache).adapter is None
    # a saved pipeline whose adapter file did not make it into the cache: said, not skipped
    (
        cache / "models--me--saved" / "snapshots" / ("5" * 40) / "adapter" / "adapter.safetensors"
    ).unlink()
    with pytest.raises(ModelNotAvailableError, match="adapter/adapter.safetensors"):
        MSDiffusionXLPipeline.from_pretrained("me/saved", cache_dir=cache)


def test_offline_first_lists_every_missing_part_at_once(monkeypatch):
    from huggingface_hub import constants

    from msdiffusion.loading import load_pipeline

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online, but no hub to be reached
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(ModelNotAvailableError) as info:
        load_pipeline("sdxl", device="cpu")
    assert time.perf_counter() - start < 10  # no minute of retries
    message = str(info.value)
    assert "4 model part(s) missing (the model hub cannot be reached)" in message
    for part in (
        "hf download stabilityai/stable-diffusion-xl-base-1.0",
        "hf download h94/IP-Adapter --include 'sdxl_models/image_encoder/*'",
        "hf download madebyollin/sdxl-vae-fp16-fix",
        "hf download doge1516/MS-Diffusion ms_adapter.bin",
    ):
        assert part in message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotAvailableError, match=r"offline \(HF_HUB_OFFLINE=1\)"):
        load_pipeline("sdxl", device="cpu")


def test_inference_and_training_load_through_one_path(tiny_factory, make_adapter, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    from msdiffusion.loading import load_pipeline, model_parts
    from msdiffusion.training.components import load_components
    from msdiffusion.training.config import ModelConfig

    components = tiny_factory()
    encoder = components.pop("image_encoder")
    components.pop("feature_extractor")
    # a base whose unconditional is its encoded empty prompt (not SDXL base's zeros)
    StableDiffusionXLPipeline(**components, force_zeros_for_empty_prompt=False).save_pretrained(
        tmp_path / "base"
    )
    encoder.save_pretrained(tmp_path / "encoder")
    from transformers import CLIPImageProcessorPil

    CLIPImageProcessorPil(
        size={"shortest_edge": 40}, crop_size={"height": 40, "width": 40}
    ).save_pretrained(
        tmp_path / "encoder"
    )  # a saved preprocessing wins over CLIP's defaults, everywhere
    # one VAE default: the preset's, for inference and training alike
    for parts in (
        model_parts("sdxl", base="b", image_encoder="e"),
        model_parts("sdxl", base="b", image_encoder="e", with_adapter=False),
    ):
        assert [p.source for p in parts if p.what == "VAE"] == ["madebyollin/sdxl-vae-fp16-fix"]
    assert not [p for p in model_parts("sdxl", base="b", vae="base") if p.what == "VAE"]
    trained = load_components(
        ModelConfig(
            preset="sdxl",
            base=str(tmp_path / "base"),
            image_encoder=str(tmp_path / "encoder"),
            vae="base",
        )
    )
    make_adapter(components["unet"]).save_pretrained(tmp_path / "adapter")
    model = load_pipeline(
        "sdxl",
        base=str(tmp_path / "base"),
        image_encoder=str(tmp_path / "encoder"),
        adapter=str(tmp_path / "adapter"),
        vae="base",
        device="cpu",
    )
    for extractor in (trained["feature_extractor"], model.pipe.feature_extractor):
        assert extractor.crop_size == {"height": 40, "width": 40}
    assert trained["force_zeros_for_empty_prompt"] is False
    assert model.pipe.config.force_zeros_for_empty_prompt is False  # the base's rule is kept
    # a local folder that is there but broken: said as such (not "offline, not cached")
    (tmp_path / "encoder" / "config.json").write_text("{ not json")
    with pytest.raises(ModelNotAvailableError, match="it is there but does not load"):
        load_components(
            ModelConfig(
                preset="sdxl",
                base=str(tmp_path / "base"),
                image_encoder=str(tmp_path / "encoder"),
                vae="base",
            )
        )
