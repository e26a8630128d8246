"""Training on the tiny preset: learning, frozen weights, padding, exact resume, divergence, bad
data, the cache (dropouts included), validation, export → pipeline, and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from msdiffusion.cli import main
from msdiffusion.training.baddata import TooMuchBadData
from msdiffusion.training.components import build_adapter, load_components
from msdiffusion.training.config import ModelConfig, load_config
from msdiffusion.training.dataset import collate_samples
from msdiffusion.training.demo import build_demo_manifest
from msdiffusion.training.encoders import FrozenEncoders
from msdiffusion.training.model import AdapterUNet
from msdiffusion.training.trainer import Trainer, TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("single_thread", "fresh_accelerate_state")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "subjects"


class Killed(BaseException):
    """Stands for the process dying mid-run (nothing may catch it)."""


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return build_demo_manifest(
        tmp_path_factory.mktemp("demo"), EXAMPLES if EXAMPLES.is_dir() else None, num_records=10
    )


def config(out: Path, manifest: Path, **overrides):
    base = {
        "model.preset": "tiny",
        "data.manifest": str(manifest),
        "data.resolution": 64,
        "data.num_workers": 0,
        "data.crop": "random",
        "batch_size": 2,
        "max_steps": 3,
        "output_dir": str(out),
        "checkpoint.every": 0,
        "logging.report_to": "none",
    }
    return load_config(None, {**base, **overrides})


def adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "adapter.safetensors"))


# ---- the model, directly -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_setup(manifest):
    from msdiffusion.manifest import scan_manifest
    from msdiffusion.training.config import DataConfig, DropoutConfig
    from msdiffusion.training.dataset import ManifestDataset
    from msdiffusion.training.records import ManifestLines

    components = load_components(ModelConfig(preset="tiny"))
    scan = scan_manifest(manifest)
    ds = ManifestDataset(
        ManifestLines.index(manifest),
        DataConfig(resolution=64),
        DropoutConfig(0, 0, 0, 0),
        components["feature_extractor"],
    )
    two = [i for i, r in enumerate(scan.records) if len(r.subjects) == 2][:2]
    batch = collate_samples([ds[(0, i)] for i in two])
    torch.manual_seed(0)
    inputs = FrozenEncoders(**components).encode_batch(batch, torch.device("cpu"))
    return components, inputs


def test_steps_reduce_the_loss_and_change_only_the_adapter(tiny_setup):
    components, inputs = tiny_setup
    unet = components["unet"]
    before_unet = {k: v.clone() for k, v in unet.state_dict().items()}
    torch.manual_seed(0)
    adapter = build_adapter(ModelConfig(preset="tiny"), unet)
    before_adapter = {k: v.clone() for k, v in adapter.state_dict().items()}
    model = AdapterUNet(unet, adapter)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-3)
    noise = torch.randn_like(inputs.latents)
    t = torch.tensor([300, 700])
    noisy = components["noise_scheduler"].add_noise(inputs.latents, noise, t)
    losses = []
    for _ in range(8):
        pred = model(noisy, t, inputs)
        loss = torch.nn.functional.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert losses[-1] < 0.95 * losses[0], losses
    adapter.uninstall(unet)
    after = unet.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before_unet.items())  # bit-identical UNet
    changed = {k for k, v in adapter.state_dict().items() if not torch.equal(v, before_adapter[k])}
    assert "dummy_tokens" not in changed  # never reaches the output, never trained
    assert {k.split(".")[0] for k in changed} == {"resampler", "projections"}


def test_padding_never_changes_the_output(tiny_setup):
    components, inputs = tiny_setup
    torch.manual_seed(0)
    model = AdapterUNet(
        components["unet"], build_adapter(ModelConfig(preset="tiny"), components["unet"])
    )
    try:

        def run(image, phrase, boxes, valid):
            torch.manual_seed(1)
            x = torch.randn_like(inputs.latents)
            conditions = replace(
                inputs,
                image_embeds=image,
                phrase_embeds=phrase,
                boxes=boxes,
                valid=valid,
                drop_grounding=torch.tensor([False, True]),
            )
            return model(x, torch.tensor([10, 900]), conditions)

        plain = run(inputs.image_embeds, inputs.phrase_embeds, inputs.boxes, inputs.valid)
        pad = 2  # two padding slots full of garbage: they must never reach the attention
        image = torch.cat(
            [inputs.image_embeds, torch.randn(2, pad, *inputs.image_embeds.shape[2:])], 1
        )
        phrase = torch.cat(
            [inputs.phrase_embeds, torch.randn(2, pad, inputs.phrase_embeds.shape[-1])], 1
        )
        boxes = torch.cat([inputs.boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, pad, 4)], 1)
        valid = torch.cat([inputs.valid, torch.zeros(2, pad, dtype=torch.bool)], 1)
        padded = run(image, phrase, boxes, valid)
        assert torch.allclose(plain, padded, atol=1e-5, rtol=0)
    finally:
        model.adapter.uninstall(components["unet"])


# ---- whole runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory, manifest):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    out = tmp_path_factory.mktemp("straight")
    cfg = config(
        out,
        manifest,
        max_steps=6,
        gradient_accumulation_steps=2,
        **{"checkpoint.every": 3, "ema.enabled": True, "ema.decay": 0.9},
    )
    return cfg, train(cfg)


def test_resume_after_a_crash_is_exact(tmp_path, manifest, straight_run):
    """6 steps straight == 3 steps + a crash (mid-step 4, after the step-3 checkpoint) + resume;
    with gradient accumulation, EMA, random crops and dropouts all in play."""
    cfg, result = straight_run
    assert result.step == 6
    crashed = config(
        tmp_path,
        manifest,
        max_steps=6,
        gradient_accumulation_steps=2,
        **{"checkpoint.every": 3, "ema.enabled": True, "ema.decay": 0.9},
    )

    def crash_at_4(trainer, state):
        if state.step == 4:
            raise Killed

    with pytest.raises(Killed):
        Trainer(crashed, callbacks=[crash_at_4]).run()
    latest = sorted((tmp_path / "checkpoints").glob("step-*"))
    assert [p.name for p in latest] == ["step-00000003"]
    resumed = train(crashed.with_overrides({"resume": "latest"}))
    assert resumed.step == 6
    a, b = adapter_weights(result.adapter_dir), adapter_weights(resumed.adapter_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = json.loads(
        (tmp_path / "checkpoints" / "step-00000006" / "trainer_state.json").read_text()
    )
    assert state["position"] == 6 * 2 * 2  # steps × accumulation × batch


def test_exported_adapter_loads_in_the_pipeline(straight_run):
    from msdiffusion.inference import generate
    from msdiffusion.loading import load_pipeline
    from msdiffusion.request import GenerationRequest, SubjectSpec

    cfg, result = straight_run
    model = load_pipeline("tiny", adapter=str(result.adapter_dir))
    loaded = model.pipe.adapter.state_dict()
    exported = adapter_weights(result.adapter_dir)
    assert all(torch.equal(loaded[k], exported[k]) for k in exported)
    refs = Path(cfg.data.manifest).parent / "refs"
    ref = sorted(p for p in refs.glob("*.png") if "mask" not in p.name)[0]
    request = GenerationRequest(
        prompt=f"a {ref.stem}",
        subjects=[SubjectSpec(images=[str(ref)], box=(0.1, 0.1, 0.6, 0.6), phrase=ref.stem)],
        height=64,
        width=64,
        num_inference_steps=2,
    )
    images = generate(model, [request], progress=False)[0].images
    assert images[0].size == (64, 64)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, manifest):
    def poison_at_3(trainer, state):
        if state.step == 3:
            with torch.no_grad():
                trainer.accelerator.unwrap_model(
                    trainer.model
                ).adapter.resampler.proj_out.weight.fill_(float("nan"))

    cfg = config(tmp_path, manifest, max_steps=5, **{"checkpoint.every": 2})
    with pytest.raises(TrainingDiverged, match="at step 4") as err:
        Trainer(cfg, callbacks=[poison_at_3]).run()
    assert "step-00000002" in str(err.value)
    names = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert names == ["step-00000002"]
    assert all(
        torch.isfinite(v).all()
        for v in adapter_weights(tmp_path / "checkpoints" / "step-00000002" / "adapter").values()
    )


def test_bad_records_are_skipped_counted_and_capped(tmp_path, manifest):
    data = tmp_path / "data"
    build_demo_manifest(data, EXAMPLES if EXAMPLES.is_dir() else None, num_records=10)
    lines = [json.loads(x) for x in (data / "train.jsonl").read_text().splitlines()]
    (data / lines[3]["image"]).unlink()  # found by the file check before training
    (data / lines[6]["image"]).write_bytes(b"garbage")  # found when loaded
    cfg = config(
        tmp_path / "run",
        data / "train.jsonl",
        max_steps=5,
        **{"bad_data.max_skip_fraction": 0.2, "bad_data.min_samples": 10, "logging.every": 1},
    )
    trainer = Trainer(cfg)
    result = trainer.run()
    assert trainer.state.extra["manifest_skipped"] == 1
    assert result.samples_skipped >= 1  # 5 steps × 2 cover the 9 usable records once
    strict = config(tmp_path / "strict", data / "train.jsonl")  # default threshold: 1 %
    with pytest.raises(TooMuchBadData, match="1 of 10 records skipped"):
        Trainer(strict)


def test_cache_matches_live_encoding_and_trains_with_dropouts(tmp_path, manifest, tiny_setup):
    from msdiffusion.training.cache import build_cache_for_config
    from msdiffusion.training.cached import CachedDataset
    from msdiffusion.training.config import DropoutConfig

    cfg = config(
        tmp_path / "run",
        manifest,
        max_steps=2,
        **{
            "data.crop": "center",
            "data.cache_dir": str(tmp_path / "cache"),
            "data.cache_shard_size": 4,
            "dropout.both": 0.5,
            "dropout.grounding": 0.5,
        },
    )
    index = build_cache_for_config(cfg)
    assert len(index["records"]) == 10 and len(index["shards"]) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("shard-*")}
    build_cache_for_config(cfg)  # resumable: complete shards are kept as they are
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes

    components, _ = tiny_setup
    encoders = FrozenEncoders(**components)
    cached = CachedDataset(cfg.data.cache_dir, cfg.dropout, cfg.seed)
    null = encoders.null_embeddings()
    saw = set()
    for key in [(0, i) for i in range(10)] + [(1, i) for i in range(10)]:
        item = cached[key]
        d = item["dropouts"]
        saw.add((d.image, d.text))
        if d.text:
            assert torch.equal(item["prompt_embeds"], null["prompt_embeds"])
        if d.image:
            assert torch.allclose(item["image_embeds"][0], null["image_embeds"], atol=1e-6)
    assert {(True, True), (False, False)} <= saw  # both buckets drawn
    # without dropouts a cached record equals its live encoding
    plain = CachedDataset(cfg.data.cache_dir, DropoutConfig(0, 0, 0, 0), cfg.seed)[(0, 0)]
    from msdiffusion.manifest import scan_manifest
    from msdiffusion.training.dataset import ManifestDataset
    from msdiffusion.training.records import ManifestLines

    scan = scan_manifest(manifest)
    live = ManifestDataset(
        ManifestLines.index(manifest),
        cfg.data,
        DropoutConfig(0, 0, 0, 0),
        components["feature_extractor"],
    )
    record = next(i for i, r in enumerate(scan.records) if r.id == plain["id"])
    batch = collate_samples([live[(0, record)]])
    prompt, _ = encoders.encode_prompts(batch["caption"])
    image, phrase = encoders.encode_subjects(
        batch["reference_pixels"], batch["phrases"], batch["valid"]
    )
    assert torch.allclose(plain["prompt_embeds"], prompt[0], atol=1e-5)
    assert torch.allclose(plain["image_embeds"], image[0], atol=1e-5)
    assert torch.allclose(plain["phrase_embeds"], phrase[0], atol=1e-5)

    result = train(cfg)
    assert result.step == 2 and result.loss is not None and result.loss == result.loss
    with pytest.raises(Exception, match="other settings"):
        Trainer(cfg.with_overrides({"data.resolution": 32}))
    # a cache built before the subject cap's default became 4 is the same cache if its records fit
    from msdiffusion.training.cached import check_fingerprint, read_index

    old = read_index(cfg.data.cache_dir)
    old["fingerprint"]["max_subjects"] = None
    check_fingerprint(old, {**old["fingerprint"], "max_subjects": 4}, "cache")
    with pytest.raises(Exception, match="max_subjects differ"):  # records with 2 subjects
        check_fingerprint(old, {**old["fingerprint"], "max_subjects": 1}, "cache")
    # live training draws the same samples, dropouts, noise and timesteps: it differs only by the
    # encoders' floating-point batch effects (the cache encoded other batches)
    live = train(cfg.with_overrides({"data.cache_dir": None, "output_dir": str(tmp_path / "l")}))
    a, b = adapter_weights(result.adapter_dir), adapter_weights(live.adapter_dir)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    assert abs(result.loss - live.loss) < 1e-5


def test_latents_draw_the_same_noise_whatever_the_moments_memory_layout(tiny_setup):
    components, _ = tiny_setup
    encoders = FrozenEncoders(**components)
    moments = torch.randn(2, 8, 8, 8)
    draws = []
    for layout in (torch.contiguous_format, torch.channels_last):
        torch.manual_seed(3)
        draws.append(encoders.sample_latents(moments.to(memory_format=layout)))
    assert torch.equal(draws[0], draws[1])


def test_a_shard_dataset_is_cached_per_shard_and_trains_as_a_stream(tmp_path, manifest):
    from msdiffusion.training.cache import build_cache_for_config
    from msdiffusion.training.demo import demo_shards

    shards = demo_shards(manifest, tmp_path / "shards", samples_per_shard=4)
    cache = tmp_path / "cache"
    cfg = config(
        tmp_path / "run",
        shards,
        max_steps=2,
        **{"data.crop": "center", "data.cache_dir": str(cache), "checkpoint.every": 1},
    )
    index = build_cache_for_config(cfg)
    assert index["source"] == "shards" and "records" not in index  # small at any scale
    assert [s["samples"] for s in index["shards"]] == [4, 4, 2] and index["skipped_count"] == 0
    result = train(cfg)
    state = json.loads((result.checkpoint / "trainer_state.json").read_text())
    assert result.step == 2 and state["data"]["kind"] == "cache-shards" and state["stream"]


@pytest.mark.parametrize("source", ["manifest", "shards"])
def test_a_cached_run_resumes_exactly(tmp_path, manifest, source):
    """From the embedding cache (a manifest's, or a shard dataset's read as streams): 4 steps
    straight == 2 steps + a crash (mid-step 3) + resume — the cached position carries over."""
    from msdiffusion.training.cache import build_cache_for_config
    from msdiffusion.training.demo import demo_shards

    data = manifest
    if source == "shards":
        data = demo_shards(manifest, tmp_path / "shards", samples_per_shard=4)
    common = {
        "max_steps": 4,
        "data.crop": "center",
        "data.cache_dir": str(tmp_path / "cache"),
        "data.cache_shard_size": 4,
        "dropout.both": 0.5,
        "checkpoint.every": 2,
    }
    build_cache_for_config(config(tmp_path / "straight", data, **common))
    straight = train(config(tmp_path / "straight", data, **common))

    def crash_at_3(trainer, state):
        if state.step == 3:
            raise Killed

    crashed = config(tmp_path / "crashed", data, **common)
    with pytest.raises(Killed):
        Trainer(crashed, callbacks=[crash_at_3]).run()
    state = json.loads(
        (tmp_path / "crashed" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text()
    )
    assert state["data"]["kind"] == ("cache-shards" if source == "shards" else "cache")
    resumed = train(crashed.with_overrides({"resume": "latest"}))
    assert resumed.step == 4
    a, b = adapter_weights(straight.adapter_dir), adapter_weights(resumed.adapter_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_trains_validates_and_logs(tmp_path, manifest):
    refs = Path(manifest).parent / "refs"
    ref = sorted(p for p in refs.glob("*.png") if "mask" not in p.name)[0]
    cfg = {
        "model": {"preset": "tiny"},
        "data": {"manifest": str(manifest), "resolution": 64, "num_workers": 0},
        "validation": {
            "every": 2,
            "num_inference_steps": 2,
            "base_dir": str(refs),
            "requests": [
                {
                    "prompt": f"a {ref.stem}",
                    "subjects": [
                        {"images": [ref.name], "box": [0.1, 0.2, 0.7, 0.9], "phrase": ref.stem}
                    ],
                }
            ],
        },
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--config",
            str(path),
            "--output-dir",
            str(out),
            "--max-steps",
            "2",
            "--batch-size",
            "1",
            "--checkpoint-every",
            "1",
            "--set",
            "checkpoint.keep=1",
        ]
    )
    assert code == 0
    assert (out / "validation" / "step-00000002.png").is_file()
    assert list((out / "logs").rglob("events.out.tfevents.*"))  # TensorBoard
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert json.loads((out / "config.json").read_text())["max_steps"] == 2
    assert main(["train", "--config", str(path), "--set", "optim.learning_rate=0"]) == 2


def test_region_image_attends_everywhere_but_keeps_boxes_in_the_grounding(tiny_setup):
    """model.region = "image" (the ablation without masked attention): every cell attends to
    every subject; the boxes still reach the grounding tokens."""
    components, inputs = tiny_setup
    unet = components["unet"]
    torch.manual_seed(0)
    adapter = build_adapter(ModelConfig(preset="tiny"), unet)
    full = torch.tensor([0.0, 0.0, 1.0, 1.0]).expand_as(inputs.boxes)
    outputs = {}
    for region in ("box", "image"):
        model = AdapterUNet(unet, adapter, region=region)
        for name, boxes in (("real", inputs.boxes), ("full", full)):
            torch.manual_seed(1)
            x = torch.randn_like(inputs.latents)
            with torch.no_grad():
                conditions = replace(
                    inputs, boxes=boxes, drop_grounding=torch.tensor([False, False])
                )
                outputs[region, name] = model(x, torch.tensor([10, 900]), conditions)
        adapter.uninstall(unet)
    assert torch.equal(outputs["box", "full"], outputs["image", "full"])
    assert not torch.allclose(outputs["box", "real"], outputs["image", "real"])
    assert not torch.allclose(outputs["image", "real"], outputs["image", "full"])
