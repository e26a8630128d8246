"""torch.compile: a call's steps reuse one graph, and a changed subject count does not force a
new graph each time — the pipeline pads subjects to power-of-two buckets (counted with a backend
that records each graph dynamo builds; the whole-UNet counts are in docs/benchmarks.md)."""

import numpy as np
import pytest
import torch
import torch._dynamo as dynamo
from diffusers.models.attention_processor import Attention
from PIL import Image

from msdiffusion import Subject
from msdiffusion.conditioning import MSConditioning
from msdiffusion.models.attention import MSCrossAttnProcessor, SubjectProjection
from msdiffusion.pipelines.subjects import subject_bucket

pytestmark = pytest.mark.usefixtures("single_thread")


def test_buckets_are_powers_of_two():
    assert [subject_bucket(n) for n in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 16]


def _graphs(counts, padded):
    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    projection = SubjectProjection(12, 16)
    attn.set_processor(MSCrossAttnProcessor("layer", projection))
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    dynamo.reset()
    compiled = torch.compile(attn, backend=backend, dynamic=False)  # static shapes (CUDA graphs)
    x, text = torch.randn(2, 16, 16), torch.randn(2, 5, 12)
    for count in counts:
        slots = subject_bucket(count) if padded else count
        valid = torch.arange(slots)[None].expand(1, slots) < count
        ms = MSConditioning(
            tokens=torch.randn(1, slots, 3, 12),
            boxes=torch.tensor([[[0.0, 0.0, 1.0, 1.0]] * slots]),
            scales=torch.ones(1, slots),
            latent_size=(4, 4),
            cond_start=1,
            valid=valid,
        ).precompute({"layer": projection}, levels=1)
        with torch.no_grad():
            for _ in range(3):  # the steps of one call
                compiled(x, encoder_hidden_states=text, ms=ms)
    return len(graphs)


def test_changed_subject_counts_reuse_the_bucket_graphs():
    counts = [1, 3, 4, 3, 2, 4]
    assert _graphs(counts, padded=True) == 3  # buckets 1, 4, 2
    assert _graphs(counts, padded=False) == 4  # 1, 3, 4, 2: one graph per count


def test_the_pipeline_pads_subjects_to_a_bucket(tiny_factory, make_adapter):
    from msdiffusion import MSDiffusionXLPipeline

    components = tiny_factory()
    pipe = MSDiffusionXLPipeline(**components, adapter=make_adapter(components["unet"]))
    pipe.set_progress_bar_config(disable=True)
    seen = []
    pipe.unet.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["cross_attention_kwargs"]["ms"]), with_kwargs=True
    )
    rng = np.random.default_rng(0)
    refs = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    subjects = [
        Subject(r, (i / 4, 0, i / 4 + 0.5, 1), w) for i, (r, w) in enumerate(zip(refs, "abc"))
    ]
    pipe("a b c", subjects, num_inference_steps=1, height=64, width=64, output_type="latent")
    (ms,) = seen
    assert ms.num_subjects == 4 and ms.valid.tolist() == [[True, True, True, False]]
