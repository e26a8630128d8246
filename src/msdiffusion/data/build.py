"""``build_dataset``: input folder → dataset folder (manifest, crops, masks, report).

Work is split in *units*: one video, or a chunk of ``images_per_chunk`` images (formed from the
sorted input list, so a chunk's content does not depend on how many processes run). Units are
dealt round-robin to shards — the processes of ``accelerate launch`` (one per GPU) or ``torchrun``,
or an explicit ``shard=(index, count)`` for independent jobs (a cluster array). A unit whose files
all have a part is done and skipped, so re-running the same command resumes. Whichever process
finishes and finds every input done merges the parts into ``manifest.jsonl`` and writes the report
(two finishing at once write the same files, atomically); the manifest's order (by input path,
then sample) and content do not depend on the sharding or on interruptions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import atomic_open, atomic_write_text
from ..errors import InputError
from ..version import __version__
from .config import BuildConfig
from .media import BadInput
from .models import Models, load_models
from .samples import Target, build_samples
from .sources import SidecarCaptions, file_key, image_target, list_inputs, video_targets
from .stats import Stats
from .writer import MANIFEST_NAME, DatasetWriter

__all__ = ["BuildResult", "build_dataset", "MODES"]

MODES = ("videos", "images")


@dataclass
class BuildResult:
    """What a run did; ``manifest`` is None while other shards still have files to do (the last
    shard to finish writes it)."""

    manifest: Path | None
    report: dict[str, Any] | None
    processed: int  # input files processed by this run
    already_done: int  # input files of this shard found done (resumed)
    remaining: int  # input files (all shards) without a part after this run
    shard: tuple[int, int] = (0, 1)  # (index, count) this run processed


def build_dataset(
    inputs: str | Path,
    out: str | Path,
    *,
    mode: str,
    cfg: BuildConfig | None = None,
    models: Models | None = None,
    shard: tuple[int, int] | None = None,
    limit: int | None = None,
    progress: bool = True,
    on_file_done: Callable[[str], None] | None = None,
) -> BuildResult:
    """Build (or resume building) a training dataset from the ``mode`` files under ``inputs``.

    ``models``: already loaded models (default: loaded from ``cfg.models`` once, if any file needs
    them). ``shard``: ``(index, count)`` of independent jobs; default: the accelerate process
    layout. ``limit``: process at most this many units in this run. ``on_file_done(relative_path)``
    is called after each input's part is written.
    """
    if mode not in MODES:
        raise InputError("mode", f"one of {', '.join(MODES)}", mode)
    cfg = cfg or BuildConfig()
    root, out = Path(inputs), Path(out)
    files = list_inputs(root, mode)
    if not files:
        raise InputError(f"--{mode}", f"no {mode[:-1]} files found in the folder", str(root))
    if shard is not None and not (shard[1] >= 1 and 0 <= shard[0] < shard[1]):
        raise InputError("--shard", "INDEX/COUNT with 0 <= INDEX < COUNT", shard)
    if limit is not None and limit < 0:
        raise InputError("--limit", ">= 0", limit)
    writer = DatasetWriter(out, cfg)
    _claim(out, cfg, mode, root)

    keys = {rel: file_key(rel) for rel in files}
    size = 1 if mode == "videos" else cfg.images_per_chunk
    units = [files[i : i + size] for i in range(0, len(files), size)]
    state: Any = None
    if shard is None:  # the process layout of `accelerate launch` / `torchrun`, if any
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=cfg.models.device == "cpu" or not torch.cuda.is_available())
        shard = (state.process_index, state.num_processes)
    mine = [u for n, u in enumerate(units) if n % shard[1] == shard[0]]
    todo = [u for u in mine if not all(writer.has_part(keys[rel]) for rel in u)]
    done_before = sum(len(u) for u in mine) - sum(len(u) for u in todo)
    if limit is not None:
        todo = todo[:limit]

    processed = 0
    if todo:
        if models is None:
            device = cfg.models.device or (state.device if state is not None else "cpu")
            models = load_models(cfg.models, device, need_features=mode == "videos")
        captions = SidecarCaptions(root, cfg.use_sidecar_captions)
        from tqdm.auto import tqdm

        label = "data build" + (f" [{shard[0]}/{shard[1]}]" if shard[1] > 1 else "")
        bar = tqdm(
            total=sum(len(u) for u in todo),
            desc=label,
            unit="file",
            disable=not progress,
            position=shard[0] if shard[1] > 1 else None,
        )
        for unit in todo:
            _process_unit(unit, root, mode, keys, captions, cfg, models, writer, on_file_done)
            processed += len(unit)
            bar.update(len(unit))
        bar.close()

    # No barrier: a process that finishes early just leaves (a distributed barrier would time out
    # while slower shards still work); the one that finds every input done merges.
    remaining = sum(not writer.has_part(keys[rel]) for rel in files)
    if remaining:
        return BuildResult(None, None, processed, done_before, remaining, shard)
    manifest, report = merge_parts(out, files, keys, cfg, mode)
    return BuildResult(manifest, report, processed, done_before, 0, shard)


def _claim(out: Path, cfg: BuildConfig, mode: str, root: Path) -> None:
    """Write ``build.json``, or check that the existing one was built with the same settings."""
    info = {
        "mode": mode,
        "config_fingerprint": cfg.fingerprint(),
        "config": cfg.to_dict(),
        "msdiffusion_version": __version__,
    }
    path = out / "build.json"
    started = any((out / "parts").glob("*.json"))  # nothing done yet: settings may change
    if path.is_file() and started:
        old = json.loads(path.read_text())
        if old.get("mode") != mode:
            raise InputError(
                "--out",
                f"this dataset was built from --{old.get('mode')}; use another folder",
                str(out),
            )
        if old.get("config_fingerprint") != info["config_fingerprint"]:
            raise InputError(
                "--out",
                "this dataset was started with other settings (a different "
                "--config); resume with the same config, or use another folder",
                str(out),
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    info["input"] = str(root.resolve())
    atomic_write_text(path, json.dumps(info, indent=2))


def _process_unit(
    unit: list[str],
    root: Path,
    mode: str,
    keys: dict[str, str],
    captions: SidecarCaptions,
    cfg: BuildConfig,
    models: Models,
    writer: DatasetWriter,
    on_file_done: Callable[[str], None] | None,
) -> None:
    """Decode the unit's files, run the model stages on their targets, write one part per file."""
    per_file: dict[str, Stats] = {}
    targets: list[Target] = []
    for rel in unit:
        stats = per_file[rel] = Stats()
        stats.add("files")
        writer.begin_file(keys[rel])
        front = video_targets if mode == "videos" else image_target
        try:
            made = front(root / rel, rel, keys[rel], cfg, stats, captions.get(rel))
        except BadInput as bad:
            stats.skip(f"file:{bad.reason}")
            continue
        stats.add("files_ok")
        targets.extend(made if isinstance(made, list) else [made])
    batch_times = Stats()  # seconds of batched model calls, booked on the unit's first file
    samples = build_samples(targets, models, cfg, batch_times) if targets else []
    per_file[unit[0]].merge(batch_times)
    for rel in unit:
        key = keys[rel]
        stats = per_file[rel]
        with stats.timed("write"):
            records = writer.write_samples(key, [s for s in samples if s.target.key == key])
        writer.write_part(key, rel, records, stats, cfg.fingerprint())
        if on_file_done is not None:
            on_file_done(rel)


def merge_parts(
    out: Path, files: list[str], keys: dict[str, str], cfg: BuildConfig, mode: str
) -> tuple[Path, dict[str, Any]]:
    """All parts → ``manifest.jsonl`` + report; returns the manifest path and the report.

    Streams: one part in memory at a time, whatever the dataset's size.
    """
    from .report import RecordSummary, write_report

    writer = DatasetWriter(out, cfg)
    summary = RecordSummary(cfg.seed)
    totals = Stats()
    fingerprint = cfg.fingerprint()
    manifest = out / MANIFEST_NAME
    with atomic_open(manifest) as handle:
        for rel in files:
            part = writer.read_part(keys[rel])
            if part.get("config") != fingerprint:
                raise InputError(
                    "--out",
                    f"part of {rel!r} was built with other settings; use another folder",
                    str(out),
                )
            for record in part["records"]:
                handle.write(json.dumps(record) + "\n")
                summary.add(record)
            totals.merge(Stats.from_dict(part["stats"]))
    report = write_report(out, summary, totals, cfg, mode)
    return manifest, report
