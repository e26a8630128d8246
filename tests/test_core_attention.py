"""Multi-subject cross-attention: the masking rules of DESIGN §2.2 against a direct reference."""

import torch
from diffusers.models.attention_processor import Attention

from msdiffusion.conditioning import MSConditioning, latent_grids
from msdiffusion.geometry import rasterize_boxes
from msdiffusion.models.attention import MSCrossAttnProcessor, SubjectProjection

Q = 3  # tokens per subject in these tests


def make_layer(seed=0):
    torch.manual_seed(seed)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8).double()
    proj = SubjectProjection(12, 16).double()
    attn.set_processor(MSCrossAttnProcessor("layer", proj))
    return attn, proj


def reference_image_branch(attn, proj, x, cond, grid):
    """Direct loops: each cell softmaxes over the tokens of the subjects covering it."""
    h, w = grid
    inside = rasterize_boxes(cond.boxes, h, w).flatten(-2)  # (B, S, N)
    heads = attn.heads
    out = torch.zeros(x.shape[0], x.shape[1], 16, dtype=x.dtype)
    for b in range(x.shape[0]):
        q = attn.to_q(x[b]).view(-1, heads, 8)  # (N, h, d)
        tokens = cond.tokens[b]  # (S, Q, C)
        k = proj.to_k_ip(tokens).view(cond.num_subjects, Q, heads, 8)
        v = proj.to_v_ip(tokens).view(cond.num_subjects, Q, heads, 8)
        for p in range(x.shape[1]):
            subjects = [s for s in range(cond.num_subjects) if inside[b, s, p]]
            if not subjects:
                continue
            for hd in range(heads):
                keys = torch.cat([k[s, :, hd] for s in subjects])  # (n, d)
                vals = torch.cat([v[s, :, hd] * cond.scales[b, s] for s in subjects])
                probs = torch.softmax(keys @ q[p, hd] / 8**0.5, dim=0)
                out[b, p, hd * 8 : (hd + 1) * 8] = probs @ vals
    return out


def run(attn, x, text, cond):
    with torch.no_grad():
        with_ms = attn(x, encoder_hidden_states=text, ms=cond)
        plain = attn(x, encoder_hidden_states=text)
    return with_ms, plain


def make_cond(boxes, scales, grid, batch=2, seed=1, cond_start=0):
    torch.manual_seed(seed)
    s = len(boxes)
    return MSConditioning(
        tokens=torch.randn(batch, s, Q, 12, dtype=torch.float64),
        boxes=torch.tensor([boxes] * batch, dtype=torch.float32),
        scales=torch.tensor([scales] * batch, dtype=torch.float64),
        latent_size=grid,
        cond_start=cond_start,
    )


def test_overlaps_joint_softmax_scales_and_background_match_reference():
    attn, proj = make_layer()
    grid = (6, 10)  # non-square
    boxes = [(0.0, 0.0, 0.6, 0.5), (0.3, 0.2, 0.9, 0.8), (0.7, 0.6, 1.0, 1.0)]
    cond = make_cond(boxes, [0.6, 1.3, 0.4], grid)
    x, text = (
        torch.randn(2, 60, 16, dtype=torch.float64),
        torch.randn(2, 7, 12, dtype=torch.float64),
    )
    with_ms, plain = run(attn, x, text, cond)
    expected = (
        attn.to_out[0](reference_image_branch(attn, proj, x, cond, grid)) - attn.to_out[0].bias
    )
    torch.testing.assert_close(with_ms - plain, expected.detach(), rtol=1e-9, atol=1e-10)
    background = ~rasterize_boxes(cond.boxes, *grid).flatten(-2).any(1)  # (B, N)
    assert background.any()
    assert torch.equal(with_ms[background], plain[background])  # exactly zero contribution


def test_full_image_box_equals_unmasked_attention():
    attn, proj = make_layer()
    cond = make_cond([(0, 0, 1, 1), (0, 0, 1, 1)], [1.0, 1.0], (4, 4))
    x, text = (
        torch.randn(2, 16, 16, dtype=torch.float64),
        torch.randn(2, 5, 12, dtype=torch.float64),
    )
    with_ms, plain = run(attn, x, text, cond)
    q = attn.to_q(x).view(2, 16, 2, 8).transpose(1, 2)
    tokens = cond.tokens.flatten(1, 2)
    k = proj.to_k_ip(tokens).view(2, -1, 2, 8).transpose(1, 2)
    v = proj.to_v_ip(tokens).view(2, -1, 2, 8).transpose(1, 2)
    unmasked = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # no mask at all
    expected = attn.to_out[0].weight @ unmasked.transpose(1, 2).flatten(2).unsqueeze(-1)
    torch.testing.assert_close(
        with_ms - plain, expected.squeeze(-1).detach(), rtol=1e-9, atol=1e-10
    )


def test_permuting_subjects_changes_nothing():
    attn, _ = make_layer()
    boxes = [(0.0, 0.0, 0.7, 0.6), (0.2, 0.3, 1.0, 1.0), (0.1, 0.1, 0.5, 0.9)]
    cond = make_cond(boxes, [0.5, 1.0, 0.8], (5, 7))
    perm = [2, 0, 1]
    permuted = MSConditioning(
        tokens=cond.tokens[:, perm],
        boxes=cond.boxes[:, perm],
        scales=cond.scales[:, perm],
        latent_size=(5, 7),
    )
    x, text = (
        torch.randn(2, 35, 16, dtype=torch.float64),
        torch.randn(2, 5, 12, dtype=torch.float64),
    )
    a, _ = run(attn, x, text, cond)
    b, _ = run(attn, x, text, permuted)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_unconditional_rows_and_zero_box_subjects_are_untouched():
    attn, _ = make_layer()
    cond = make_cond([(0, 0, 1, 1), (0, 0, 0, 0)], [1.0, 1.0], (3, 3), batch=2, cond_start=2)
    x, text = torch.randn(4, 9, 16, dtype=torch.float64), torch.randn(4, 5, 12, dtype=torch.float64)
    with_ms, plain = run(attn, x, text, cond)
    assert torch.equal(with_ms[:2], plain[:2])  # the unconditional half
    assert not torch.allclose(with_ms[2:], plain[2:])
    # the zero-box subject is never attended: changing its tokens changes nothing
    other = MSConditioning(
        tokens=cond.tokens.clone(),
        boxes=cond.boxes,
        scales=cond.scales,
        latent_size=(3, 3),
        cond_start=2,
    )
    other.tokens[:, 1] += 5.0
    again, _ = run(attn, x, text, other)
    assert torch.equal(again, with_ms)


def test_region_mask_replaces_box():
    attn, _ = make_layer()
    grid = (4, 4)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    mask[:, 0, 0:4, 0:2] = True  # left strip, top half → cells rows 0-1, col 0
    mask[:, 0, 6:8, 6:8] = True  # bottom-right corner → cell (3, 3)
    cond = make_cond([(0, 0, 1, 1)], [1.0], grid)
    cond = MSConditioning(
        tokens=cond.tokens,
        boxes=cond.boxes,
        scales=cond.scales,
        latent_size=grid,
        region_masks=mask,
        has_mask=torch.ones(2, 1, dtype=torch.bool),
    )
    x, text = (
        torch.randn(2, 16, 16, dtype=torch.float64),
        torch.randn(2, 5, 12, dtype=torch.float64),
    )
    with_ms, plain = run(attn, x, text, cond)
    changed = (with_ms - plain).abs().amax(-1) > 0  # (B, N)
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[0:2, 0] = True
    expected[3, 3] = True
    assert torch.equal(changed[0].view(4, 4), expected)


def test_box_rasterisation_rule_and_grids():
    cells = rasterize_boxes(torch.tensor([0.1, 0.2, 0.55, 0.9]), 10, 20)
    rows, cols = torch.nonzero(cells, as_tuple=True)
    assert (rows.min().item(), rows.max().item()) == (2, 8)  # floor(2), ceil(9) - 1
    assert (cols.min().item(), cols.max().item()) == (2, 10)  # floor(2), ceil(11) - 1
    assert not rasterize_boxes(torch.zeros(4), 5, 5).any()
    assert latent_grids((13, 21))[:3] == [(13, 21), (7, 11), (4, 6)]
    cond = make_cond([(0, 0, 1, 1)], [1.0], (13, 21))
    assert cond.grid(7 * 11) == (7, 11)
