"""Metric arithmetic against hand-computed values: cosines, box crops on non-square images,
IoU, detection matching, M-DINO as a product per image and reporting conventions."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from msdiffusion.errors import InputError
from msdiffusion.evaluation.metrics import (
    apply_convention,
    assign_detections,
    cosine_rows,
    product_score,
)
from msdiffusion.evaluation.stats import summarize
from msdiffusion.geometry import box_iou, box_to_pixels, crop_box, nms


def test_cosine_rows_hand_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [1.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 2.0], [4.0, 3.0], [-1.0, -2.0]])
    assert cosine_rows(a, b).tolist() == pytest.approx([0.0, 1.0, 24 / 25, -1.0])
    with pytest.raises(ValueError):
        cosine_rows(a, b[:2])


def test_box_crop_geometry_on_non_square_images():
    # 200 wide, 100 high: x scales by 200, y by 100 — independently.
    assert box_to_pixels((0.25, 0.5, 0.75, 1.0), 200, 100) == (50, 50, 150, 100)
    # floor the start, ceil the end: 0.1*30=3, 0.1*20=2, 0.33*30=9.9 -> 10, 0.5*20=10
    assert box_to_pixels((0.1, 0.1, 0.33, 0.5), 30, 20) == (3, 2, 10, 10)
    assert box_to_pixels((0.5, 0.5, 0.5, 0.5), 30, 20) == (15, 10, 16, 11)  # >= 1 pixel
    assert box_to_pixels((-0.2, 0.0, 1.3, 1.0), 30, 20) == (0, 0, 30, 20)  # clamped
    image = Image.new("RGB", (200, 100), (0, 0, 0))
    image.paste((255, 0, 0), (50, 50, 150, 100))  # red exactly where the box is
    crop = crop_box(image, (0.25, 0.5, 0.75, 1.0))
    assert crop.size == (100, 50)
    assert crop.getcolors() == [(100 * 50, (255, 0, 0))]
    tall = crop_box(Image.new("RGB", (64, 256)), (0.0, 0.25, 0.5, 0.75))
    assert tall.size == (32, 128)


def test_box_iou_hand_values():
    assert box_iou((0, 0, 1, 1), (0, 0, 1, 1)) == 1.0
    assert box_iou((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)) == 0.0
    assert box_iou((0, 0, 1, 1), (0.5, 0, 1.5, 1)) == pytest.approx(1 / 3)
    assert box_iou((0.25, 0.25, 0.75, 0.75), (0, 0, 1, 1)) == pytest.approx(0.25)
    assert box_iou((0.2, 0.2, 0.2, 0.4), (0, 0, 1, 1)) == 0.0  # empty box


def test_m_dino_is_a_product_per_image_then_a_mean():
    scores = [[0.5, 0.8], [1.0, 0.2]]
    # M-DINO as the report computes it: per image the product, then the mean over images
    m_dino = summarize({f"image{i}": product_score(s) for i, s in enumerate(scores)})["mean"]
    assert m_dino == pytest.approx((0.4 + 0.2) / 2)
    # not the product of the per-subject means (0.75 * 0.5)
    assert m_dino != pytest.approx(0.375)
    assert product_score([0.9, 0.9, 0.5]) == pytest.approx(0.405)
    assert product_score([-0.5, -0.5]) == 0.0  # two failures never multiply into a success


def test_detection_matching_for_subjects_sharing_a_phrase():
    left, right = (0.0, 0.25, 0.5, 0.75), (0.5, 0.25, 1.0, 0.75)
    found_right, found_left = (0.55, 0.3, 0.95, 0.7), (0.05, 0.3, 0.45, 0.7)
    assert assign_detections([found_right, found_left], [left, right]) == [1, 0]
    assert assign_detections([found_left], [left, right]) == [0, 0]  # too few: reuse
    boxes = torch.tensor([[0, 0, 0.5, 0.5], [0.01, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]])
    assert nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5) == [0, 2]


def test_reporting_conventions():
    assert apply_convention("clip_t", 0.31) == 0.31  # raw by default
    assert apply_convention("clip_t", 0.3, clip_t_weight=2.5) == pytest.approx(0.75)
    assert apply_convention("clip_t", -0.1, clip_t_weight=2.5) == 0.0
    assert apply_convention("dino", 0.5, percent=True) == 50.0
    assert apply_convention("layout_iou", 0.5, percent=True) == 0.5
    with pytest.raises(InputError):
        apply_convention("clip_t", 0.3, clip_t_weight=-1)
