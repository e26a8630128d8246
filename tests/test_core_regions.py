"""Regions and references: one mask rule for images and arrays, alpha as the region of a
cut-out, 16-bit pictures, the aspect check, a subject of scale 0 that still competes, padding."""

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from PIL import Image

from msdiffusion.conditioning import MSConditioning
from msdiffusion.encoding import load_image, open_image
from msdiffusion.errors import InputError
from msdiffusion.layout import Subject, mask_fits, mask_to_array, validate_layout
from msdiffusion.models.attention import MSCrossAttnProcessor, SubjectProjection
from msdiffusion.request import SubjectSpec
from msdiffusion.testing.tokenizers import char_tokenizer

LEFT = np.zeros((8, 12), dtype=bool)
LEFT[:, :5] = True


@pytest.mark.parametrize(
    "mask",
    [
        LEFT,
        LEFT.astype(np.uint8) * 255,
        LEFT.astype(np.uint8),  # 0/1 integers: the same region, not "empty"
        LEFT.astype(np.float32),
        LEFT.astype(np.float64) * 255,
        LEFT.astype(np.uint16) * 65535,
        torch.from_numpy(LEFT.astype(np.float32))[None],  # (1, h, w) tensor
        Image.fromarray(LEFT.astype(np.uint8) * 255),  # L
        Image.fromarray(LEFT.astype(np.uint8)),  # L holding 0/1
        Image.fromarray(LEFT),  # mode "1"
        Image.fromarray(LEFT.astype(np.uint16) * 65535),  # I;16
        Image.fromarray(LEFT.astype(np.uint8) * 255).convert("RGB"),
        np.repeat((LEFT.astype(np.uint8) * 255)[..., None], 3, axis=-1),  # (h, w, 3)
    ],
    ids=lambda m: getattr(m, "mode", None) or f"{type(m).__name__}-{getattr(m, 'dtype', '')}",
)
def test_one_mask_rule_for_images_and_arrays(mask):
    assert np.array_equal(mask_to_array(mask), LEFT)


def test_alpha_is_the_region_of_a_cut_out(tmp_path):
    rgba = np.full((8, 12, 4), 255, dtype=np.uint8)  # white everywhere ...
    rgba[..., 3] = LEFT * 255  # ... opaque on the left only
    image = Image.fromarray(rgba, "RGBA")
    assert np.array_equal(mask_to_array(image), LEFT)
    image.save(tmp_path / "cutout.png")
    spec = SubjectSpec([image.convert("RGB")], None, "dog", mask=str(tmp_path / "cutout.png"))
    _, mask = spec.load()
    assert np.array_equal(mask, LEFT)
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert np.array_equal(mask_to_array(la), LEFT)
    assert np.array_equal(mask_to_array(rgba), LEFT)  # (h, w, 4) arrays too


def test_masks_outside_every_range_or_empty_are_errors():
    for bad, rule in (
        (LEFT.astype(np.float32) * 70000, r"0–65535"),
        (LEFT.astype(np.float32) - 1, ">= 0"),
        (np.zeros((4, 4)), "is empty"),
        (np.zeros((2, 3, 5)), "2-D"),
        (np.array([["a"]]), "numbers"),
    ):
        with pytest.raises(InputError, match=rule):
            mask_to_array(bad)


def test_sixteen_bit_references_keep_their_levels(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    assert open_image(tmp_path / "ramp16.png").mode == "I;16"
    rgb = np.asarray(load_image(tmp_path / "ramp16.png"))
    assert rgb.shape == (64, 64, 3)
    assert abs(rgb.mean() - 127.5) < 1.0  # PIL's own conversion gives ≈ 254 (white)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255


def test_the_aspect_check_rejects_what_does_not_fit():
    assert not mask_fits((1, 2), (64, 64))  # 1×2 passed the old check for a square output
    assert not mask_fits((2, 1), (64, 64))
    assert mask_fits((1, 1), (64, 64)) and mask_fits((1, 2), (64, 128))
    assert mask_fits((333, 200), (1000, 600))  # one side rounded to whole pixels
    assert mask_fits((142, 85), (1000, 600))
    assert not mask_fits((142, 80), (1000, 600))
    subject = Subject(Image.new("RGB", (8, 8)), None, "dog", mask=np.ones((1, 2), dtype=bool))
    with pytest.raises(InputError, match=r"subjects\[0\].mask: must have the output's aspect"):
        validate_layout([[subject]], ["a dog"], char_tokenizer(), (64, 64), 0.6, None)


# -- attention: scale 0 competes, padding never does --------------------------------------------
Q = 2


def layer(seed=0):
    torch.manual_seed(seed)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4).double()
    proj = SubjectProjection(6, 8).double()
    attn.set_processor(MSCrossAttnProcessor("layer", proj))
    return attn


def branch(attn, tokens, boxes, scales, valid=None):
    cond = MSConditioning(
        tokens=tokens,
        boxes=torch.tensor([boxes], dtype=torch.float32),
        scales=torch.tensor([scales], dtype=torch.float64),
        latent_size=(4, 4),
        valid=None if valid is None else torch.tensor([valid]),
    )
    torch.manual_seed(5)
    x, text = torch.randn(1, 16, 8, dtype=torch.float64), torch.randn(1, 3, 6, dtype=torch.float64)
    with torch.no_grad():
        return attn(x, encoder_hidden_states=text, ms=cond) - attn(x, encoder_hidden_states=text)


def test_a_subject_of_scale_zero_still_competes_in_the_joint_softmax():
    attn = layer()
    torch.manual_seed(1)
    tokens = torch.randn(1, 2, Q, 6, dtype=torch.float64)
    full = (0.0, 0.0, 1.0, 1.0)
    both = branch(attn, tokens, [full, full], [1.0, 0.0])
    alone = branch(attn, tokens[:, :1], [full], [1.0])
    # the released rule: subject 2's probabilities × 0 — it still takes its share of the softmax
    assert not torch.allclose(both, alone)
    assert both.abs().amax() < alone.abs().amax() * 1.01
    only_zero = branch(attn, tokens[:, 1:], [full], [0.0])
    assert torch.equal(only_zero, torch.zeros_like(only_zero))


def test_padding_is_marked_apart_from_scale_and_never_attended():
    attn = layer()
    torch.manual_seed(1)
    tokens = torch.randn(1, 2, Q, 6, dtype=torch.float64)
    full = (0.0, 0.0, 1.0, 1.0)
    padded = branch(attn, tokens, [full, full], [1.0, 1.0], valid=[True, False])
    alone = branch(attn, tokens[:, :1], [full], [1.0])
    torch.testing.assert_close(padded, alone, rtol=1e-12, atol=1e-12)
