"""The data pipeline's model classes with random weights, built from configs — offline.

``tiny``: a few thousand parameters each, milliseconds per image on a CPU: tests and the demo
(the models' outputs are meaningless, the code paths are the real ones). ``base``: the released
checkpoints' architectures at full size (BLIP base, Grounding DINO with Swin-T, SAM ViT-B,
DINOv2 base, OWLv2 B/16, CLIP B/32); ``default``: the architectures of a build's *default*
models — BLIP large (ViT-L/16 at 384 px), Grounding DINO base (Swin-B), SAM ViT-B, DINOv2 base:
what a throughput benchmark needs when the weights cannot be downloaded — compute per image is
the same as with trained weights.

Tokenizers are written to a folder (``tokenizers``): a made-up WordPiece vocabulary for BLIP and
Grounding DINO, the character-level CLIP tokenizer for OWLv2. ``msdiffusion.data.models`` wraps
these models into a build's ``Models``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from .tokenizers import bert_tokenizer, char_tokenizer

__all__ = ["MODEL_NAMES", "random_model", "save_random_models"]

MODEL_NAMES = ("blip", "grounding_dino", "owlv2", "sam", "clip", "dinov2")
BERT_VOCAB = {"tiny": 1100, "base": 30524, "default": 30524}
# The default checkpoints' architectures where they differ from transformers' config defaults.
BLIP_LARGE_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=384,
    patch_size=16,
)
SWIN_B = dict(
    model_type="swin",
    embed_dim=128,
    depths=[2, 2, 18, 2],
    num_heads=[4, 8, 16, 32],
    window_size=12,
    image_size=384,
    out_indices=[2, 3, 4],
)


def random_model(
    name: str, size: str = "tiny", *, work_dir: str | Path | None = None
) -> tuple[Any, Any]:
    """``(model, processor)`` of ``name`` (one of ``MODEL_NAMES``) with random weights.

    Tokenizer files go to ``work_dir`` (default: a temporary folder, removed afterwards — the
    tokenizer is then in memory only). Weights depend on torch's global generator: seed it first
    for reproducible models.
    """
    if work_dir is None:
        with tempfile.TemporaryDirectory(prefix="msd-random-models-") as tmp:
            return _build(name, size, Path(tmp))
    return _build(name, size, Path(work_dir))


def _build(name: str, size: str, work: Path) -> tuple[Any, Any]:
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoProcessor,
        Owlv2Config,
        Owlv2ForObjectDetection,
        Owlv2Processor,
        SamConfig,
        SamModel,
        SamProcessor,
    )
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.grounding_dino.image_processing_pil_grounding_dino import (
        GroundingDinoImageProcessorPil,
    )
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil
    from transformers.models.sam.image_processing_pil_sam import SamImageProcessorPil

    if size not in ("tiny", "base", "default"):
        raise ValueError(f"size must be tiny, base or default, got {size!r}")
    if name not in MODEL_NAMES:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    tiny = size == "tiny"
    if name == "blip":
        vocab = BERT_VOCAB[size]
        config = (
            BlipConfig(
                text_config=dict(
                    vocab_size=vocab,
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    max_position_embeddings=40,
                    bos_token_id=101,
                    sep_token_id=102,
                    pad_token_id=0,
                    encoder_hidden_size=16,
                ),
                vision_config=dict(
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=32,
                    patch_size=8,
                ),
                projection_dim=16,
            )
            if tiny
            else BlipConfig(
                text_config=dict(
                    vocab_size=vocab, bos_token_id=101, sep_token_id=102, pad_token_id=0
                ),
                vision_config=BLIP_LARGE_VISION if size == "default" else None,
            )
        )
        image_processor = BlipImageProcessorPil(
            size={"height": 32, "width": 32} if tiny else {"height": 384, "width": 384}
        )
        return (
            BlipForConditionalGeneration(config).eval(),
            BlipProcessor(image_processor, bert_tokenizer(work / "bert", vocab)),
        )
    if name == "grounding_dino":
        vocab = BERT_VOCAB[size]
        config = (
            GroundingDinoConfig(
                backbone_config=dict(
                    model_type="swin",
                    embed_dim=8,
                    depths=[1, 1, 1, 1],
                    num_heads=[1, 1, 1, 1],
                    window_size=4,
                    image_size=64,
                    out_indices=[2, 3, 4],
                ),
                text_config=dict(
                    model_type="bert",
                    vocab_size=vocab,
                    hidden_size=16,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    intermediate_size=16,
                    max_position_embeddings=64,
                ),
                d_model=32,
                encoder_layers=1,
                decoder_layers=2,
                encoder_ffn_dim=16,
                decoder_ffn_dim=16,
                encoder_attention_heads=2,
                decoder_attention_heads=2,
                num_queries=30,
                max_text_len=48,
                num_feature_levels=3,
                encoder_n_points=2,
                decoder_n_points=2,
            )
            if tiny
            else GroundingDinoConfig(backbone_config=SWIN_B if size == "default" else None)
        )  # = grounding-dino-tiny
        image_processor = GroundingDinoImageProcessorPil(
            size={"shortest_edge": 64, "longest_edge": 96}
            if tiny
            else {"shortest_edge": 800, "longest_edge": 1333}
        )
        return (
            GroundingDinoForObjectDetection(config).eval(),
            GroundingDinoProcessor(image_processor, bert_tokenizer(work / "bert", vocab)),
        )
    if name == "owlv2":
        tokenizer = char_tokenizer(work / "clip_tokenizer")
        ids = dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        config = (
            Owlv2Config(
                text_config=dict(
                    vocab_size=len(tokenizer),
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    max_position_embeddings=16,
                    **ids,
                ),
                vision_config=dict(
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=64,
                    patch_size=16,
                ),
                projection_dim=16,
            )
            if tiny
            else Owlv2Config(text_config=dict(vocab_size=len(tokenizer), **ids))
        )
        side = 64 if tiny else 960
        return (
            Owlv2ForObjectDetection(config).eval(),
            Owlv2Processor(Owlv2ImageProcessorPil(size={"height": side, "width": side}), tokenizer),
        )
    if name == "sam":
        config = (
            SamConfig(
                vision_config=dict(
                    hidden_size=16,
                    intermediate_size=32,
                    num_hidden_layers=1,
                    num_attention_heads=2,
                    image_size=64,
                    patch_size=16,
                    output_channels=16,
                    mlp_dim=32,
                    global_attn_indexes=[0],
                    window_size=0,
                    num_pos_feats=8,
                ),
                prompt_encoder_config=dict(
                    hidden_size=16,
                    image_size=64,
                    patch_size=16,
                    mask_input_channels=4,
                    num_point_embeddings=4,
                ),
                mask_decoder_config=dict(
                    hidden_size=16,
                    num_hidden_layers=2,
                    num_attention_heads=2,
                    mlp_dim=32,
                    iou_head_hidden_dim=16,
                    num_multimask_outputs=3,
                ),
            )
            if tiny
            else SamConfig()
        )
        image_processor = (
            SamImageProcessorPil(
                size={"longest_edge": 64},
                pad_size={"height": 64, "width": 64},
                mask_size={"longest_edge": 16},
                mask_pad_size={"height": 16, "width": 16},
            )
            if tiny
            else SamImageProcessorPil()
        )
        return SamModel(config).eval(), SamProcessor(image_processor)
    if name == "clip":
        config = (
            CLIPVisionConfig(
                hidden_size=16,
                intermediate_size=32,
                num_hidden_layers=1,
                num_attention_heads=2,
                image_size=32,
                patch_size=8,
                projection_dim=16,
            )
            if tiny
            else CLIPVisionConfig()
        )
        side = config.image_size
        return (
            CLIPVisionModelWithProjection(config).eval(),
            CLIPImageProcessorPil(
                size={"shortest_edge": side}, crop_size={"height": side, "width": side}
            ),
        )
    # dinov2
    config = (
        Dinov2Config(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
        if tiny
        else Dinov2Config()
    )
    crop = 32 if tiny else 224
    return (
        Dinov2Model(config).eval(),
        BitImageProcessorPil(
            size={"shortest_edge": crop if tiny else 256},
            crop_size={"height": crop, "width": crop},
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ),
    )


def save_random_models(
    directory: str | Path,
    size: str = "tiny",
    *,
    seed: int = 0,
    names: tuple[str, ...] = MODEL_NAMES,
) -> dict[str, str]:
    """Build and ``save_pretrained`` each model (+ processor) into ``directory/<name>``."""
    directory = Path(directory)
    dirs = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            model, processor = random_model(name, size, work_dir=directory / "_tokenizers")
            model.save_pretrained(directory / name)
            processor.save_pretrained(directory / name)
            dirs[name] = str(directory / name)
    return dirs
