"""Grounding resampler: box embedding order, shapes, grounding drop, released sizes."""

import math

import torch

from msdiffusion.models.resampler import GroundingResampler, fourier_box_embedding


def test_fourier_box_embedding_order_matches_released_layout():
    box = torch.tensor([[0.1, 0.2, 0.7, 0.9]])
    emb = fourier_box_embedding(box)[0]
    assert emb.shape == (64,)
    for k in range(8):
        f = 100 ** (k / 8)
        for s, fn in enumerate((math.sin, math.cos)):
            for coord in range(4):
                assert math.isclose(
                    emb[k * 8 + s * 4 + coord].item(), fn(f * box[0, coord].item()), abs_tol=1e-5
                )


def small(**kw):
    torch.manual_seed(0)
    args = dict(
        image_embed_dim=24,
        phrase_embed_dim=12,
        dim=32,
        depth=2,
        heads=4,
        head_dim=8,
        num_queries=5,
        out_dim=40,
    )
    args.update(kw)
    return GroundingResampler(**args).eval()


def test_shapes_and_batch_independence():
    r = small()
    feats, phrases, boxes = torch.randn(3, 9, 24), torch.randn(3, 12), torch.rand(3, 4)
    out = r(feats, phrases, boxes)
    assert out.shape == (3, 5, 40)
    one = r(feats[1:2], phrases[1:2], boxes[1:2])
    torch.testing.assert_close(one[0], out[1], rtol=1e-5, atol=1e-6)


def test_drop_grounding_ignores_phrase_and_box():
    r = small()
    feats = torch.randn(2, 9, 24)
    drop = torch.tensor([True, True])
    a = r(feats, torch.randn(2, 12), torch.rand(2, 4), drop)
    b = r(feats, torch.randn(2, 12), torch.rand(2, 4), drop)
    torch.testing.assert_close(a, b)
    kept = r(feats, torch.randn(2, 12), torch.rand(2, 4), torch.tensor([False, False]))
    assert not torch.allclose(a, kept)


def test_released_sizes_have_about_119m_parameters_and_released_keys():
    with torch.device("meta"):
        r = GroundingResampler()
    count = sum(p.numel() for p in r.parameters())
    assert 118e6 < count < 120e6
    keys = r.state_dict().keys()
    shapes = {k: tuple(v.shape) for k, v in r.state_dict().items()}
    assert shapes["grounding_latents"] == (1, 16, 1280)
    assert shapes["latent_proj.0.weight"] == (1664, 832)
    assert shapes["latent_proj.2.weight"] == (20480, 1664)
    assert shapes["proj_in.weight"] == (1280, 1664)
    assert shapes["layers.3.0.to_kv.weight"] == (2560, 1280)
    assert shapes["layers.0.1.1.weight"] == (5120, 1280)
    assert shapes["layers.0.1.3.weight"] == (1280, 5120)
    assert shapes["proj_out.weight"] == (2048, 1280)
    for name in (
        "layers.0.0.norm1.weight",
        "layers.0.0.norm2.weight",
        "layers.0.1.0.weight",
        "attention_norm.weight",
        "norm_out.weight",
        "latent_norm.weight",
    ):
        assert name in keys
