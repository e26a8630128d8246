"""How many graphs ``torch.compile`` builds for a UNet with the multi-subject processors as the
subject count changes from call to call: subjects padded to the pipeline's buckets (powers of two,
``msdiffusion.pipelines.subjects.subject_bucket``) vs unpadded, each with dynamo's automatic
dynamic shapes on (its default) and off.

    python benchmarks/compile_counts.py                # tiny UNet, CPU, subject counts 1..6

Counted with a backend that records each graph dynamo hands it and runs it eagerly (no
inductor: the count is what matters, and it takes seconds). One "call" is two UNet steps on one
``MSConditioning``, with its K/V and masks computed before the first step, as the pipeline does.
"""

from __future__ import annotations

import argparse
import json

import torch


def conditioning(unet, adapter, count: int, padded: bool, latent: tuple[int, int]):
    from msdiffusion.conditioning import MSConditioning
    from msdiffusion.pipelines.subjects import subject_bucket

    g = torch.Generator().manual_seed(count)
    slots = subject_bucket(count) if padded else count
    tokens = torch.randn(
        1, slots, adapter.config.num_queries, adapter.config.cross_attention_dim, generator=g
    )
    boxes = torch.zeros(1, slots, 4)
    for j in range(count):
        boxes[0, j] = torch.tensor([j / (count + 1), 0.0, (j + 2) / (count + 1), 1.0])
    valid = torch.zeros(1, slots, dtype=torch.bool)
    valid[0, :count] = True
    ms = MSConditioning(
        tokens=tokens,
        boxes=boxes,
        scales=torch.full((1, slots), 0.6),
        latent_size=latent,
        cond_start=1,
        valid=valid,
    )
    with torch.no_grad():
        return ms.precompute(adapter.layer_projections(), len(unet.config.block_out_channels))


def count_graphs(counts: list[int], padded: bool, dynamic: bool) -> int:
    import torch._dynamo as dynamo

    from msdiffusion.models.adapter import MSAdapter
    from msdiffusion.testing.sdxl import adapter_kwargs, random_components

    dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    components = random_components("tiny")
    unet = components["unet"]
    torch.manual_seed(0)
    adapter = MSAdapter.for_unet(unet, **adapter_kwargs("tiny"))
    adapter.install(unet)
    compiled = torch.compile(unet, backend=backend, dynamic=None if dynamic else False)
    latent = (8, 8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, *latent, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    added = {
        "text_embeds": torch.randn(2, 32, generator=g),
        "time_ids": torch.rand(2, 6, generator=g),
    }
    with torch.no_grad(), dynamo.config.patch(automatic_dynamic_shapes=dynamic):
        for count in counts:
            ms = conditioning(unet, adapter, count, padded, latent)
            for t in (900, 500):  # two steps of one call
                compiled(
                    x,
                    torch.tensor(t),
                    text,
                    added_cond_kwargs=added,
                    cross_attention_kwargs={"ms": ms},
                )
    return len(graphs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,2,3,4,5,6", help="subject counts, one call each")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    result = {"subject_counts": counts, "graphs": {}}
    for dynamic in (True, False):
        for padded in (True, False):
            layout = "padded to buckets" if padded else "unpadded"
            key = f"{layout}, automatic dynamic {'on' if dynamic else 'off'}"
            result["graphs"][key] = count_graphs(counts, padded, dynamic)
            print(key, result["graphs"][key], flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
