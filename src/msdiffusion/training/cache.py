"""The embedding cache: run the frozen encoders once, train the UNet only.

``msdiffusion train cache`` writes, under ``data.cache_dir``::

    shard-00000.safetensors ...   per record: VAE posterior (mean, logvar), prompt embeddings,
                                  pooled embedding, micro-conditioning, per subject: image
                                  features, phrase embedding, box (centre crop)
    null.safetensors              the empty caption's embeddings and the all-zero reference's
                                  image features — what the dropouts substitute at train time
    index.json                    written last: fingerprint, shards, records, skipped records

Every file is written to a temporary name and renamed, and an existing shard whose fingerprint
matches is reused, so an interrupted cache run continues where it stopped. Several processes
(``accelerate launch``) split the shards between them. The fingerprint (model sources, size,
crop, interpolation, subject cap, the manifest's hash, dtype) must match the training config.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset

from ..atomic import atomic_path, atomic_write_json
from ..errors import InputError
from ..manifest import Record
from ..runtime import dtype_label, to_dtype
from .config import DropoutConfig, TrainConfig
from .dataset import SampleError, collate_samples, sample_rng
from .dropout import NONE, draw_dropouts

__all__ = [
    "CACHE_FORMAT",
    "cache_fingerprint",
    "build_cache",
    "build_cache_for_config",
    "CachedDataset",
    "read_index",
]

CACHE_FORMAT = "msdiffusion-train-cache/1"
INDEX_NAME, NULL_NAME = "index.json", "null.safetensors"
PER_RECORD = (
    "latent_moments",
    "prompt_embeds",
    "pooled_prompt_embeds",
    "time_ids",
    "image_embeds",
    "phrase_embeds",
    "boxes",
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        "manifest_sha256": _sha256(Path(d.manifest)),
        "dtype": dtype_label(dtype),
    }


def read_index(cache_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(cache_dir) / INDEX_NAME
    if not path.is_file():
        raise InputError(
            "data.cache_dir",
            "holds no complete cache (no index.json); run `msdiffusion train cache` first",
            str(cache_dir),
        )
    return json.loads(path.read_text())


# ---- building ----------------------------------------------------------------------------------


class _RecordLoader(Dataset):
    """Records → samples without dropouts or substitution; a bad record yields its reason."""

    def __init__(self, dataset: Any, records: Sequence[Record]):
        self.dataset, self.records = dataset, list(records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any] | tuple[str, str]:
        record = self.records[i]
        try:
            return self.dataset.load(record, np.random.default_rng(0), dropouts=NONE)
        except SampleError as err:
            return (record.id, str(err))


def _collate_or_skip(items: list[Any]) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    good = [x for x in items if isinstance(x, dict)]
    bad = [x for x in items if not isinstance(x, dict)]
    return (collate_samples(good) if good else None), bad


def build_cache(
    config: TrainConfig,
    records: Sequence[Record],
    root: Path,
    encoders: Any,
    *,
    dtype: torch.dtype,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    barrier: Any = lambda: None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode ``records`` into ``config.data.cache_dir``; returns the index (main process) or {}.

    Shard i is written by process ``i % world_size``; the main process writes the null
    embeddings and, once every shard is there, the index.
    """
    from tqdm.auto import tqdm

    from .dataset import ManifestDataset

    out = Path(config.data.cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    fingerprint = cache_fingerprint(config, dtype)
    fp_text = json.dumps(fingerprint, sort_keys=True)
    size = config.data.cache_shard_size
    shards = [list(records[i : i + size]) for i in range(0, len(records), size)]
    dataset = ManifestDataset(
        records,
        root,
        config.data,
        DropoutConfig(0, 0, 0, 0),
        encoders.feature_extractor,
        seed=config.seed,
    )
    mine = [i for i in range(len(shards)) if i % world_size == rank]
    bar = tqdm(
        total=sum(len(shards[i]) for i in mine),
        desc=f"caching (process {rank})",
        unit="record",
        disable=not progress,
    )
    for i in mine:
        path = out / f"shard-{i:05d}.safetensors"
        if _shard_matches(path, fp_text):
            bar.update(len(shards[i]))
            continue
        tensors: dict[str, torch.Tensor] = {}
        kept: list[list[Any]] = []
        skipped: list[tuple[str, str]] = []
        loader = DataLoader(
            _RecordLoader(dataset, shards[i]),
            batch_size=config.batch_size,
            num_workers=config.data.num_workers,
            collate_fn=_collate_or_skip,
        )
        for batch, bad in loader:
            skipped.extend(bad)
            if batch is not None:
                for j, entry in enumerate(_encode_for_cache(batch, encoders, device, dtype)):
                    key = f"r{len(kept)}"
                    tensors.update({f"{key}.{name}": value for name, value in entry.items()})
                    kept.append([batch["id"][j], key, int(entry["boxes"].shape[0])])
            bar.update(len(bad) + (0 if batch is None else len(batch["id"])))
        meta = {"fingerprint": fp_text, "records": json.dumps(kept), "skipped": json.dumps(skipped)}
        _save_tensors(tensors, path, meta)
    bar.close()
    if rank == 0:
        null = {k: v.to("cpu", dtype).contiguous() for k, v in encoders.null_embeddings().items()}
        _save_tensors(null, out / NULL_NAME, {"fingerprint": fp_text})
    barrier()
    if rank != 0:
        return {}
    index: dict[str, Any] = {"fingerprint": fingerprint, "shards": [], "records": [], "skipped": []}
    for i in range(len(shards)):
        name = f"shard-{i:05d}.safetensors"
        with safe_open(str(out / name), framework="pt") as handle:
            meta = handle.metadata()
        index["shards"].append(name)
        index["records"].extend([[i, key, rid, n] for rid, key, n in json.loads(meta["records"])])
        index["skipped"].extend(json.loads(meta["skipped"]))
    atomic_write_json(out / INDEX_NAME, index)
    return index


def build_cache_for_config(config: TrainConfig) -> dict[str, Any]:
    """`msdiffusion train cache`: the encoders of ``config.model`` over ``config.data.manifest``
    into ``config.data.cache_dir``, on every process ``accelerate launch`` started."""
    from accelerate.utils import DistributedType

    from .baddata import SkipLog
    from .components import load_components, move_module, resolve_weight_dtype
    from .encoders import FrozenEncoders
    from .launch import make_accelerator, usable_records

    if config.data.cache_dir is None:
        raise InputError("data.cache_dir", "is required to build a cache", None)
    if config.data.crop != "center":
        raise InputError("data.crop", "must be 'center' for a cache", config.data.crop)
    acc = make_accelerator(config, with_trackers=False)
    weight_dtype = resolve_weight_dtype(
        config.model.weight_dtype, acc.device, fsdp=acc.distributed_type == DistributedType.FSDP
    )
    dtype = weight_dtype if config.data.cache_dtype == "auto" else to_dtype(config.data.cache_dtype)
    vae_dtype = to_dtype(config.model.vae_dtype) if config.model.vae_dtype else weight_dtype
    components = load_components(config.model, with_unet=False, dtype=weight_dtype)
    for name in ("vae", "text_encoder", "text_encoder_2", "image_encoder"):
        move_module(components[name], acc.device, vae_dtype if name == "vae" else weight_dtype)
    skips = SkipLog(config.bad_data, enabled_logging=acc.is_main_process)
    records, root, _ = usable_records(config, acc, skips)
    index = build_cache(
        config,
        records,
        root,
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
        skips.check(len(index["skipped"]), len(records), "cache", runtime=False)
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


# ---- reading -----------------------------------------------------------------------------------


class CachedDataset(Dataset):
    """Cached samples with the dropouts applied at read time (same draws as the live dataset).

    Items: id, latent_moments (8, h, w), prompt_embeds (77, C), pooled_prompt_embeds (D_pool),
    time_ids (6,), image_embeds (S, T, D_img), phrase_embeds (S, D_phrase), boxes (S, 4),
    drop_grounding, dropouts, skipped (always empty: bad records were left out when caching).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str],
        dropout: DropoutConfig,
        seed: int = 0,
        expected_fingerprint: dict[str, Any] | None = None,
    ):
        self.dir = Path(cache_dir)
        index = read_index(self.dir)
        if expected_fingerprint is not None and index["fingerprint"] != expected_fingerprint:
            diff = sorted(
                k
                for k in expected_fingerprint
                if expected_fingerprint[k] != index["fingerprint"].get(k)
            )
            raise InputError(
                "data.cache_dir",
                f"was built for other settings ({', '.join(diff)} "
                "differ); rebuild it with `msdiffusion train cache`",
                str(cache_dir),
            )
        self.shards, self.records = index["shards"], index["records"]
        self.skipped = index["skipped"]
        self.dropout, self.seed = dropout, seed
        if not self.records:
            raise InputError("data.cache_dir", "holds no records", str(cache_dir))
        with safe_open(str(self.dir / NULL_NAME), framework="pt") as handle:
            self.null = {k: handle.get_tensor(k) for k in handle.keys()}
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict[str, Any]:  # open handles do not cross process boundaries
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, shard: int) -> Any:
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.dir / self.shards[shard]), framework="pt")
        return self._handles[shard]

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        shard, prefix, record_id, _ = self.records[index]
        handle = self._handle(shard)
        sample: dict[str, Any] = {
            name: handle.get_tensor(f"{prefix}.{name}") for name in PER_RECORD
        }
        dropouts = draw_dropouts(sample_rng(self.seed, epoch, index), self.dropout)
        if dropouts.text:
            sample["prompt_embeds"] = self.null["prompt_embeds"]
            sample["pooled_prompt_embeds"] = self.null["pooled_prompt_embeds"]
        if dropouts.image:
            sample["image_embeds"] = (
                self.null["image_embeds"].expand_as(sample["image_embeds"]).clone()
            )  # (S, T, D_img)
        sample.update(
            id=record_id, drop_grounding=dropouts.grounding, dropouts=dropouts, skipped=[]
        )
        return sample


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
