"""The embedding cache: run the frozen encoders once, train the UNet only.

``msdiffusion train cache`` writes, under ``data.cache_dir``::

    shard-00000.safetensors ...   per record: VAE posterior (mean, logvar), prompt embeddings,
                                  pooled embedding, micro-conditioning, per subject: image
                                  features, phrase embedding, box (centre crop; the zero box
                                  where the crop left it empty); its metadata lists its records
    null.safetensors              the empty caption's embeddings and the all-zero reference's
                                  image features — what the dropouts substitute at train time
    index.json                    written last: fingerprint, shards, skipped records (and, for
                                  a manifest, every record: it is read by index)

A manifest's cache shard holds ``data.cache_shard_size`` records; a shard dataset's cache has one
cache shard per data shard (its samples in order), read as a stream like the data shards — the
index lists shards, not records, so it stays small at any scale. Every file is written to a
temporary name and renamed, and an existing shard whose fingerprint matches is reused, so an
interrupted cache run continues where it stopped. Several processes (``accelerate launch``) split
the shards between them. The fingerprint (model sources, size, crop, interpolation, subject cap,
the data's hash, dtype) must match the training config (``cached.py`` reads the cache).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from ..atomic import atomic_path, atomic_write_json
from ..errors import InputError
from ..runtime import dtype_label, to_dtype
from ..shards import is_dataset, iter_tar
from .cached import INDEX_NAME, NULL_NAME
from .config import DropoutConfig, TrainConfig
from .dataset import ManifestDataset, SampleBuilder, ShardSamples, collate_samples
from .dropout import NONE
from .records import SampleError, ShardSet

__all__ = ["CACHE_FORMAT", "cache_fingerprint", "build_cache", "build_cache_for_config"]

CACHE_FORMAT = "msdiffusion-train-cache/1"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _data_digest(manifest: str) -> str:
    """SHA-256 of a manifest file, or of a shard dataset's index.json."""
    return ShardSet.read(manifest).digest if is_dataset(manifest) else _sha256(Path(manifest))


def cache_fingerprint(config: TrainConfig, dtype: torch.dtype) -> dict[str, Any]:
    """What the cached tensors depend on; a cache is used only when this matches."""
    m, d = config.model, config.data
    if d.manifest is None:
        raise InputError("data.manifest", "is required to build or check a cache", None)
    return {
        "format": CACHE_FORMAT,
        "model": {
            "preset": m.preset,
            "base": m.base,
            "vae": m.vae,
            "image_encoder": m.image_encoder,
            "image_encoder_subfolder": m.image_encoder_subfolder,
            "tiny_seed": m.tiny_seed if m.preset == "tiny" else None,
        },
        "size": list(d.size),
        "crop": "center",
        "reference_interpolation": d.reference_interpolation,
        "max_subjects": d.max_subjects,
        "manifest_sha256": _data_digest(d.manifest),
        "dtype": dtype_label(dtype),
    }


# ---- building ----------------------------------------------------------------------------------


class _Items(Dataset):
    """The records of one cache shard → samples without dropouts; a bad one yields its reason.
    ``items``: line indices of a manifest, or ``(key, members)`` of a data shard's samples."""

    def __init__(self, make: Any, items: list[Any], shard: int):
        self.make, self.items, self.shard = make, items, shard

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int) -> tuple[dict[str, Any], int] | tuple[str | None, str]:
        item = self.items[j]
        try:
            if isinstance(self.make, ManifestDataset):
                return self.make.load(item, np.random.default_rng(0), dropouts=NONE), item
            key, files = item
            return self.make(files, key, self.shard, j, 0, dropouts=NONE), j
        except SampleError as err:
            return (err.record_id, str(err))


def _collate_or_skip(items: list[Any]) -> tuple[Any, list[int], list[tuple[str | None, str]]]:
    good = [x for x in items if isinstance(x[0], dict)]
    bad = [x for x in items if not isinstance(x[0], dict)]
    batch = collate_samples([g[0] for g in good]) if good else None
    return batch, [g[1] for g in good], bad


class _Source:
    """What a cache is built from — a manifest's ``lines`` or, without them, the shard dataset
    ``data.manifest`` names: ``count`` cache shards, ``items(i)`` the records of one."""

    def __init__(self, config: TrainConfig, feature_extractor: Any, lines: Any = None):
        builder_args = (config.data, DropoutConfig(0, 0, 0, 0), feature_extractor)
        self.shards: ShardSet | None = None
        if lines is not None:
            self.make: Any = ManifestDataset(lines, *builder_args, seed=config.seed)
            size = config.data.cache_shard_size
            self.count = math.ceil(len(lines) / size)
            self._ranges = [
                range(i * size, min(len(lines), (i + 1) * size)) for i in range(self.count)
            ]
        else:
            self.shards = ShardSet.read(config.data.manifest)
            self.make = ShardSamples(SampleBuilder(*builder_args), self.shards, config.seed)
            self.count = len(self.shards.shards)

    @property
    def streamed(self) -> bool:
        return self.shards is not None

    def items(self, i: int) -> list[Any]:
        if self.shards is None:
            return list(self._ranges[i])
        return list(iter_tar(self.shards.shards[i]))  # one data shard, in memory

    def size(self, i: int) -> int:
        return len(self._ranges[i]) if self.shards is None else self.shards.sizes[i]


def build_cache(
    config: TrainConfig,
    source: _Source,
    encoders: Any,
    *,
    dtype: torch.dtype,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    barrier: Any = lambda: None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode ``source`` into ``config.data.cache_dir``; returns the index (main process) or {}.

    Shard i is written by process ``i % world_size``; the main process writes the null
    embeddings and, once every shard is there, the index.
    """
    from tqdm.auto import tqdm

    out = Path(config.data.cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = cache_fingerprint(config, dtype)
    fp_text = json.dumps(fingerprint, sort_keys=True)
    mine = [i for i in range(source.count) if i % world_size == rank]
    bar = tqdm(
        total=sum(source.size(i) for i in mine),
        desc=f"caching (process {rank})",
        unit="record",
        disable=not progress,
    )
    for i in mine:
        path = out / f"shard-{i:05d}.safetensors"
        if _shard_matches(path, fp_text):
            bar.update(source.size(i))
            continue
        tensors: dict[str, torch.Tensor] = {}
        kept: list[list[Any]] = []
        skipped: list[tuple[str | None, str]] = []
        loader = DataLoader(
            _Items(source.make, source.items(i), i),
            batch_size=config.batch_size,
            num_workers=config.data.num_workers,
            collate_fn=_collate_or_skip,
        )
        for batch, where, bad in loader:
            skipped.extend(bad)
            if batch is not None:
                for j, entry in enumerate(_encode_for_cache(batch, encoders, device, dtype)):
                    key = f"r{len(kept)}"
                    tensors.update({f"{key}.{name}": value for name, value in entry.items()})
                    kept.append([batch["id"][j], key, int(entry["boxes"].shape[0]), where[j]])
            bar.update(len(bad) + (0 if batch is None else len(batch["id"])))
        meta = {"fingerprint": fp_text, "records": json.dumps(kept), "skipped": json.dumps(skipped)}
        _save_tensors(tensors, path, meta)
    bar.close()
    if rank == 0:
        null = {k: v.to("cpu", dtype).contiguous() for k, v in encoders.null_embeddings().items()}
        _save_tensors(null, out / NULL_NAME, {"fingerprint": fp_text})
    barrier()
    return _write_index(out, source, fingerprint) if rank == 0 else {}


def _write_index(out: Path, source: _Source, fingerprint: dict[str, Any]) -> dict[str, Any]:
    index: dict[str, Any] = {"fingerprint": fingerprint, "shards": [], "skipped": []}
    records: list[list[Any]] = []
    skipped_count = 0
    for i in range(source.count):
        name = f"shard-{i:05d}.safetensors"
        with safe_open(str(out / name), framework="pt") as handle:
            meta = handle.metadata()
        kept, skipped = json.loads(meta["records"]), json.loads(meta["skipped"])
        skipped_count += len(skipped)
        if source.streamed:
            index["shards"].append({"path": name, "samples": len(kept)})
            index["skipped"].extend(skipped[: max(0, 50 - len(index["skipped"]))])
        else:
            index["shards"].append(name)
            records.extend([[i, key, rid, n] for rid, key, n, _ in kept])
            index["skipped"].extend(skipped)
    if source.streamed:
        index.update(source="shards", skipped_count=skipped_count)
    else:
        index["records"] = records
    atomic_write_json(out / INDEX_NAME, index)
    return index


def build_cache_for_config(config: TrainConfig) -> dict[str, Any]:
    """`msdiffusion train cache`: the encoders of ``config.model`` over ``config.data.manifest``
    into ``config.data.cache_dir``, on every process ``accelerate launch`` started."""

    from .baddata import SkipLog
    from .components import load_components, move_module, resolve_weight_dtype
    from .encoders import FrozenEncoders
    from .launch import make_accelerator, manifest_lines

    if config.data.cache_dir is None:
        raise InputError("data.cache_dir", "is required to build a cache", None)
    if config.data.crop != "center":
        raise InputError("data.crop", "must be 'center' for a cache", config.data.crop)
    acc = make_accelerator(config, with_trackers=False)
    weight_dtype = resolve_weight_dtype(config.model.weight_dtype, acc.device)
    dtype = weight_dtype if config.data.cache_dtype == "auto" else to_dtype(config.data.cache_dtype)
    vae_dtype = to_dtype(config.model.vae_dtype) if config.model.vae_dtype else weight_dtype
    components = load_components(config.model, with_unet=False, dtype=weight_dtype)
    for name in ("vae", "text_encoder", "text_encoder_2", "image_encoder"):
        move_module(components[name], acc.device, vae_dtype if name == "vae" else weight_dtype)
    skips = SkipLog(config.bad_data, enabled_logging=acc.is_main_process)
    if config.data.manifest is not None and is_dataset(config.data.manifest):
        source = _Source(config, components["feature_extractor"])
        total = source.shards.samples
    else:
        lines, _, _ = manifest_lines(config, acc, skips)
        source, total = _Source(config, components["feature_extractor"], lines), len(lines)
    index = build_cache(
        config,
        source,
        FrozenEncoders(**components),
        dtype=dtype,
        device=acc.device,
        rank=acc.process_index,
        world_size=acc.num_processes,
        barrier=acc.wait_for_everyone,
        progress=acc.is_local_main_process,
    )
    if index:
        skips.report([tuple(s) for s in index["skipped"]], "when caching")
        skipped = index.get("skipped_count", len(index["skipped"]))
        skips.check(skipped, total, "cache", runtime=False)
    acc.wait_for_everyone()
    return index


@torch.no_grad()
def _encode_for_cache(
    batch: dict[str, Any], encoders: Any, device: torch.device, dtype: torch.dtype
) -> list[dict[str, torch.Tensor]]:
    """One collated batch → per-record tensors (padding removed), on the CPU in ``dtype``."""
    moments = encoders.encode_latent_moments(batch["pixel_values"].to(device))
    prompt_embeds, pooled = encoders.encode_prompts(batch["caption"])
    valid = batch["valid"]
    image_embeds, phrase_embeds = encoders.encode_subjects(
        batch["reference_pixels"], batch["phrases"], valid.to(device)
    )
    out = []
    for j in range(valid.shape[0]):
        n = int(valid[j].sum())
        entry = {
            "latent_moments": moments[j],
            "prompt_embeds": prompt_embeds[j],
            "pooled_prompt_embeds": pooled[j],
            "time_ids": batch["time_ids"][j],
            "image_embeds": image_embeds[j, :n],
            "phrase_embeds": phrase_embeds[j, :n],
            "boxes": batch["boxes"][j, :n],
        }
        out.append(
            {
                k: v.to("cpu", torch.float32 if k in ("time_ids", "boxes") else dtype).contiguous()
                for k, v in entry.items()
            }
        )
    return out


def _shard_matches(path: Path, fp_text: str) -> bool:
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("fingerprint") == fp_text
    except Exception:  # a damaged file: rebuild it
        return False


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
