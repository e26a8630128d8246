"""MSAdapter: install/uninstall, our format, the released format, unsafe and wrong checkpoints."""

import json
import os
import pickle

import pytest
import torch
from safetensors import safe_open

from msdiffusion.conditioning import MSConditioning
from msdiffusion.errors import CheckpointError
from msdiffusion.models.adapter import MSAdapter
from msdiffusion.models.attention import cross_attention_layers
from msdiffusion.models.convert import (
    released_layer_order,
    save_original_checkpoint,
)
from msdiffusion.testing.sdxl import adapter_kwargs


def unet_call(unet, cond=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 16, generator=g)
    text = torch.randn(2, 77, 64, generator=g)
    added = {
        "text_embeds": torch.randn(2, 32, generator=g),
        "time_ids": torch.rand(2, 6, generator=g),
    }
    kwargs = {"ms": cond} if cond is not None else None
    with torch.no_grad():
        return unet(
            x,
            torch.tensor([500, 500]),
            text,
            added_cond_kwargs=added,
            cross_attention_kwargs=kwargs,
        ).sample


@pytest.fixture()
def unet(tiny_factory):
    return tiny_factory()["unet"]


def test_install_uninstall_restores_bit_identical_outputs(unet, make_adapter):
    before = unet_call(unet)
    original = {k: type(v) for k, v in unet.attn_processors.items()}
    adapter = make_adapter(unet)
    adapter.install(unet)
    assert torch.equal(unet_call(unet), before)  # installed, no subjects: plain
    tokens = torch.randn(2, 1, 16, 64)
    cond = MSConditioning(
        tokens=tokens,
        boxes=torch.tensor([[[0, 0, 0.5, 1.0]]] * 2),
        scales=torch.ones(2, 1),
        latent_size=(8, 16),
    )
    assert not torch.equal(unet_call(unet, cond), before)
    adapter.uninstall(unet)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == original
    assert torch.equal(unet_call(unet), before)


def test_projections_start_as_copies_of_to_k_to_v(unet, make_adapter):
    adapter = make_adapter(unet)
    for name, attn in cross_attention_layers(unet).items():
        assert torch.equal(adapter.projection(name).to_k_ip.weight, attn.to_k.weight)
        assert torch.equal(adapter.projection(name).to_v_ip.weight, attn.to_v.weight)


def test_save_load_round_trip_is_bit_exact_and_config_in_metadata(unet, make_adapter, tmp_path):
    adapter = make_adapter(unet, seed=3)
    adapter.save_pretrained(tmp_path / "a")
    loaded = MSAdapter.from_pretrained(tmp_path / "a")
    for (k1, v1), (k2, v2) in zip(adapter.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    with safe_open(str(tmp_path / "a" / "adapter.safetensors"), "pt") as f:
        meta = json.loads(f.metadata()["config"])
    assert meta["resampler_dim"] == 64 and meta["layers"] == adapter.config.layers
    os.remove(tmp_path / "a" / "config.json")  # metadata alone is enough
    MSAdapter.from_pretrained(tmp_path / "a")
    adapter.save_pretrained(tmp_path / "a")  # overwrite in place, atomically
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_released_format_round_trip_uses_every_key(unet, make_adapter, tmp_path):
    adapter = make_adapter(unet, seed=4)
    path = save_original_checkpoint(adapter, unet, tmp_path / "ms_adapter.bin")
    data = torch.load(path, weights_only=True)
    assert set(data) == {"image_proj", "ms_adapter", "dummy_image_tokens"}
    order = released_layer_order(unet)
    assert sorted(data["ms_adapter"]) == sorted(
        f"{i}.to_{kv}_ip.weight" for i in order for kv in "kv"
    )
    assert all(i % 2 == 1 for i in order)
    loaded = MSAdapter.from_original_checkpoint(path, unet, **adapter_kwargs("tiny"))
    for v1, v2 in zip(adapter.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(v1, v2)
    # one extra key, one missing key, one wrong shape: each named
    data["image_proj"]["unused.weight"] = torch.zeros(1)
    torch.save(data, tmp_path / "extra.bin")
    with pytest.raises(CheckpointError, match="unexpected key 'image_proj.unused.weight'"):
        MSAdapter.from_original_checkpoint(tmp_path / "extra.bin", unet, **adapter_kwargs("tiny"))
    del data["image_proj"]["unused.weight"]
    first = min(order)
    del data["ms_adapter"][f"{first}.to_v_ip.weight"]
    torch.save(data, tmp_path / "missing.bin")
    with pytest.raises(CheckpointError, match=f"missing key 'ms_adapter.{first}.to_v_ip.weight'"):
        MSAdapter.from_original_checkpoint(tmp_path / "missing.bin", unet, **adapter_kwargs("tiny"))
    with pytest.raises(CheckpointError, match="has shape"):  # default (released) sizes ≠ tiny file
        MSAdapter.from_original_checkpoint(path, unet)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/msdiffusion-pickle-ran",))


def test_code_running_pickle_is_refused_never_executed(unet, tmp_path):
    marker = "/tmp/msdiffusion-pickle-ran"
    if os.path.exists(marker):
        os.remove(marker)
    path = tmp_path / "evil.bin"
    with open(path, "wb") as f:
        pickle.dump({"image_proj": _RunsCode()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        MSAdapter.from_original_checkpoint(path, unet)
    assert not os.path.exists(marker)


def test_not_a_checkpoint_and_wrong_unet(unet, make_adapter, tmp_path, tiny_factory):
    (tmp_path / "text.bin").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        MSAdapter.from_original_checkpoint(tmp_path / "text.bin", unet)
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="missing section 'image_proj'"):
        MSAdapter.from_original_checkpoint(tmp_path / "other.bin", unet)
    adapter = make_adapter(unet)
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(
        **{**unet.config, "attention_head_dim": (2, 2, 2), "block_out_channels": (32, 32, 64)}
    )
    with pytest.raises(CheckpointError, match="expects"):
        adapter.install(other)


def test_unet_step_with_subjects_traces_without_graph_breaks(unet, make_adapter):
    """torch.compile-friendly: no data-dependent Python control flow in the processors."""
    make_adapter(unet).install(unet)
    cond = MSConditioning(
        tokens=torch.randn(1, 2, 16, 64),
        boxes=torch.tensor([[[0, 0, 0.5, 1.0], [0.4, 0, 1.0, 1.0]]]),
        scales=torch.full((1, 2), 0.6),
        latent_size=(8, 16),
        cond_start=1,
    )
    unet_call(unet, cond)  # first step of a call fills the per-call caches
    g = torch.Generator().manual_seed(0)
    args = (
        torch.randn(2, 4, 8, 16, generator=g),
        torch.tensor(500),
        torch.randn(2, 77, 64, generator=g),
    )
    added = {"text_embeds": torch.randn(2, 32, generator=g), "time_ids": torch.rand(2, 6)}
    with torch.no_grad():
        explained = torch._dynamo.explain(unet)(
            *args, added_cond_kwargs=added, cross_attention_kwargs={"ms": cond}
        )
    assert explained.graph_break_count == 0


def test_released_layer_order_at_full_sdxl_size():
    """The released ``ms_adapter`` indices ↔ module names, pinned on SDXL base's real config
    (built on the meta device: no memory, no weights)."""
    from diffusers import UNet2DConditionModel

    from msdiffusion.testing.sdxl import ARCHITECTURES

    arch = ARCHITECTURES["full"]
    with torch.device("meta"):
        unet = UNet2DConditionModel(
            down_block_types=arch.down_blocks,
            up_block_types=arch.up_blocks,
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
            **arch.unet,
        )
    order = released_layer_order(unet)
    assert len(order) == 70 and sorted(order) == list(range(1, 140, 2))
    block = "attentions.{}.transformer_blocks.{}.attn2"
    pins = {
        1: "down_blocks.1." + block.format(0, 0),  # first of the down blocks
        47: "down_blocks.2." + block.format(1, 9),  # last of the down blocks
        49: "up_blocks.0." + block.format(0, 0),  # then the up blocks ...
        119: "up_blocks.1." + block.format(2, 1),
        121: "mid_block." + block.format(0, 0),  # ... and the mid block last
        139: "mid_block." + block.format(0, 9),
    }
    assert {i: order[i] for i in pins} == pins
    assert sum(name.startswith("down_blocks") for name in order.values()) == 24
    assert sum(name.startswith("up_blocks") for name in order.values()) == 36
    assert sum(name.startswith("mid_block") for name in order.values()) == 10
    config = MSAdapter.config_for_unet(unet)
    assert config.latent_proj_dim == 1664 and config.cross_attention_dim == 2048


def test_latent_proj_width_follows_the_original_rule_and_old_files_keep_theirs(
    unet, make_adapter, tmp_path
):
    from msdiffusion.models.adapter import FORMAT, FORMAT_1

    new = make_adapter(unet)  # tiny: phrase 32, box 64 → 2 × 96 = 192 (image_embed_dim is 32)
    assert new.config.latent_proj_dim == 192
    assert new.resampler.latent_proj[0].weight.shape == (192, 96)
    assert new.resampler.latent_proj[2].weight.shape[1] == 192
    new.save_pretrained(tmp_path / "new")
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["format"] == FORMAT and config["latent_proj_dim"] == 192
    # a format-1 adapter (before latent_proj_dim existed): its width was image_embed_dim
    old = MSAdapter.for_unet(unet, **{**adapter_kwargs("tiny"), "latent_proj_dim": 32})
    old.save_pretrained(tmp_path / "old")
    for path in (tmp_path / "old" / "config.json",):
        data = json.loads(path.read_text())
        data["format"] = FORMAT_1
        del data["latent_proj_dim"]
        path.write_text(json.dumps(data))
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "old" / "adapter.safetensors"
    save_file(load_file(weights), str(weights), metadata={"format": FORMAT_1})  # no config inside
    loaded = MSAdapter.from_pretrained(tmp_path / "old")
    assert loaded.config.latent_proj_dim == 32
    for (k1, v1), (k2, v2) in zip(old.state_dict().items(), loaded.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    # a checkpoint of the other width says which width to build
    with pytest.raises(CheckpointError, match="latent_proj_dim=32"):
        new.load_state_dict_checked(old.state_dict())
    data["format"] = "msdiffusion-adapter/9"
    (tmp_path / "old" / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="newer msdiffusion"):
        MSAdapter.from_pretrained(tmp_path / "old")
