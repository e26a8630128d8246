"""Tiny random scoring models (CLIP, DINO ViT, OWLv2), written as model folders.

They make ``eval score --models tiny`` work offline and in seconds — the numbers mean nothing, but
every step (``from_pretrained`` on a folder, preprocessing, batching, detection, cropping, report)
runs as with the real models (``msdiffusion.evaluation``). The tests use them too.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .tokenizers import char_tokenizer

__all__ = ["write_tiny_scorers"]


def write_tiny_scorers(directory: str | Path, seed: int = 0) -> dict[str, str]:
    """Write ``clip/``, ``dino/`` and ``owlv2/`` under ``directory`` (reused if present).

    Returns ``{"clip": path, "dino": path, "detector": path}``.
    """
    from transformers import (
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2ImageProcessorPil,
        ViTConfig,
        ViTImageProcessorPil,
        ViTModel,
    )

    root = Path(directory)
    paths = {"clip": root / "clip", "dino": root / "dino", "detector": root / "owlv2"}
    if all((p / "config.json").is_file() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = char_tokenizer(paths["clip"])
        text = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=len(tok),
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        vision = dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        )
        CLIPModel(
            CLIPConfig(
                text_config={**text, "max_position_embeddings": 77},
                vision_config={**vision, "image_size": 32, "patch_size": 8},
                projection_dim=16,
            )
        ).save_pretrained(paths["clip"])
        CLIPImageProcessorPil(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ).save_pretrained(paths["clip"])

        ViTModel(
            ViTConfig(**vision, image_size=32, patch_size=8), add_pooling_layer=False
        ).save_pretrained(paths["dino"])
        ViTImageProcessorPil(
            size={"height": 32, "width": 32},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ).save_pretrained(paths["dino"])

        # OWLv2's class head maps image features to the text width: projection_dim = text width.
        owl = Owlv2ForObjectDetection(
            Owlv2Config(
                text_config={**text, "max_position_embeddings": 16},
                vision_config={**vision, "image_size": 64, "patch_size": 16},
                projection_dim=32,
            )
        )
        with torch.no_grad():  # boxes = OWLv2's patch-grid prior (random offsets are degenerate)
            owl.box_head.dense2.weight.zero_()
            owl.box_head.dense2.bias.zero_()
        owl.save_pretrained(paths["detector"])
        char_tokenizer(paths["detector"])
        Owlv2ImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(paths["detector"])
    return {k: str(v) for k, v in paths.items()}
