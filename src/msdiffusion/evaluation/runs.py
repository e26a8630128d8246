"""Run folders: layout, index, atomic writes, completeness checks and sharding.

A run folder (``RUN``)::

    RUN/run.json                     what was run: benchmark, data folder, generation settings
    RUN/index.jsonl                  one line per planned image: sample id, image index, path,
                                     seed, group, prompt, subjects (phrases, boxes, references)
    RUN/images/<sample_id>/<k>.png   image k of a sample (+ <k>.json: the generation sidecar)
    RUN/scores.jsonl, report.json, report.md, charts/, grid.png   written by ``eval score``

Bring-your-own-images runs need only ``RUN/images/<sample_id>/<k>.(png|jpg|jpeg|webp)`` — or an
``index.jsonl`` whose lines hold at least ``sample_id`` and ``image`` (relative to RUN or absolute).

Every file is written to a temporary name and moved into place with ``os.replace``, so a file that
exists is complete; images are additionally checked for truncation (PNG ``IEND``, JPEG ``EOI``,
WebP RIFF size), so a file cut short by a full disk or a copy is redone, never scored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..atomic import atomic_write_json, atomic_write_text
from ..benchmarks import IMAGE_EXTENSIONS, Benchmark, canonical_name, load_benchmark
from ..errors import InputError

__all__ = [
    "INDEX_FILE",
    "RUN_FILE",
    "ImageRecord",
    "RunFolder",
    "RunInputs",
    "resolve_run",
    "is_complete_image",
    "shard",
]

RUN_FILE = "run.json"
INDEX_FILE = "index.jsonl"
RUN_FORMAT = "msdiffusion-eval-run"
T = TypeVar("T")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"


# ----------------------------------------------------------------------------------------------
# Completeness and sharding


def is_complete_image(path: str | Path) -> bool:
    """True if ``path`` is an image file that was written to the end (cheap: no decoding).

    PNG must end with its IEND chunk, JPEG with an EOI marker (trailing padding allowed), WebP
    must be as long as its RIFF header says; other formats are fully decoded.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size < 16:
            return False
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(max(0, size - 1024))
            tail = f.read()
    except OSError:
        return False
    if head.startswith(_PNG_SIGNATURE):
        return tail.endswith(_PNG_END)
    if head.startswith(b"\xff\xd8"):
        return b"\xff\xd9" in tail
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return int.from_bytes(head[4:8], "little") + 8 <= size
    try:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
        return True
    except Exception:  # noqa: BLE001 - any decoding failure means "not a complete image"
        return False


def shard(items: Sequence[T], index: int, count: int) -> list[T]:
    """Process ``index`` of ``count``'s share: every ``count``-th item from ``index``.

    Shares are disjoint and together cover ``items``; interleaving keeps them balanced when the
    items are ordered by cost (e.g. groups of 2 then 3 subjects).
    """
    if count < 1 or not 0 <= index < count:
        raise InputError("shard", "needs 0 <= index < count", (index, count))
    return list(items[index::count])


# ----------------------------------------------------------------------------------------------
# Records and the run folder


@dataclass
class ImageRecord:
    """One image of a run: which sample, which of its images, where, and how it was made."""

    sample_id: str
    index: int  # k: the image's position among its sample's images
    image: str  # path relative to the run folder (or absolute, for external index files)
    seed: int | None = None
    group: str | None = None
    prompt: str | None = None
    subjects: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> ImageRecord:
        if not isinstance(d, dict) or "sample_id" not in d or "image" not in d:
            raise InputError("index", f"{where}: each entry needs sample_id and image", d)
        return cls(
            sample_id=str(d["sample_id"]),
            index=int(d.get("index", 0)),
            image=str(d["image"]),
            seed=d.get("seed"),
            group=d.get("group"),
            prompt=d.get("prompt"),
            subjects=list(d.get("subjects") or []),
        )


class RunFolder:
    """A run folder on disk (see the module docstring for its layout)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()

    @property
    def meta_path(self) -> Path:
        return self.root / RUN_FILE

    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    def image_relpath(self, sample_id: str, k: int) -> str:
        return f"images/{sample_id}/{k}.png"

    def resolve(self, relative: str) -> Path:
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def sidecar(self, image: Path) -> Path:
        return image.with_suffix(".json")

    def is_done(self, record: ImageRecord) -> bool:
        """The image is complete and its generation sidecar readable."""
        image = self.resolve(record.image)
        if not is_complete_image(image):
            return False
        try:
            json.loads(self.sidecar(image).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return True

    # -- run.json ----------------------------------------------------------------------------
    def read_meta(self) -> dict[str, Any] | None:
        if not self.meta_path.exists():
            return None
        try:
            meta = json.loads(self.meta_path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise InputError("run", f"{RUN_FILE} is not valid JSON", str(self.meta_path)) from err
        if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
            raise InputError(
                "run", f"{RUN_FILE} is not an msdiffusion evaluation run", str(self.meta_path)
            )
        return meta

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_json(self.meta_path, {"format": RUN_FORMAT, **meta})

    # -- index.jsonl ---------------------------------------------------------------------------
    def write_index(self, records: Iterable[ImageRecord]) -> None:
        lines = [json.dumps(r.to_dict(), ensure_ascii=False) for r in records]
        atomic_write_text(self.index_path, "\n".join(lines) + "\n")

    def read_index(self, path: str | Path | None = None) -> list[ImageRecord]:
        """Records from ``index.jsonl`` (or ``path``: JSON lines, a JSON list, or
        ``{"images": [...]}``)."""
        path = Path(path) if path else self.index_path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise InputError("index", "must be a readable index file", str(path)) from err
        try:
            data = json.loads(text)  # one JSON document: a list, {"images": [...]}, or one entry
            entries = data.get("images", [data]) if isinstance(data, dict) else data
        except ValueError:
            try:
                entries = [json.loads(line) for line in text.splitlines() if line.strip()]
            except ValueError as err:
                raise InputError("index", "is not JSON lines or a JSON list", str(path)) from err
        if not isinstance(entries, list):
            raise InputError("index", "must hold a list of entries", str(path))
        return [ImageRecord.from_dict(e, f"{path.name} entry {i}") for i, e in enumerate(entries)]

    def discover(self) -> list[ImageRecord]:
        """Bring-your-own layout: ``images/<sample_id>/<k>.<ext>`` (k = image index; other stems
        are numbered in name order)."""
        base = self.root / "images"
        if not base.is_dir():
            raise InputError(
                "run",
                "has neither index.jsonl nor an images/ folder (layout: "
                "images/<sample_id>/<k>.png; see docs/evaluation.md)",
                str(self.root),
            )
        folders: dict[Path, list[Path]] = {}
        for p in sorted(base.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
                folders.setdefault(p.parent, []).append(p)
        records = []
        for folder, files in folders.items():
            sample_id = folder.relative_to(base).as_posix()
            numbered = all(f.stem.isdigit() for f in files)
            for pos, f in enumerate(
                sorted(files, key=lambda f: (int(f.stem) if numbered else 0, f.name))
            ):
                records.append(
                    ImageRecord(
                        sample_id=sample_id,
                        index=int(f.stem) if numbered else pos,
                        image=f.relative_to(self.root).as_posix(),
                    )
                )
        return records


# ----------------------------------------------------------------------------------------------
# A run resolved against its benchmark


@dataclass
class RunInputs:
    """A run folder resolved against its benchmark."""

    run: RunFolder
    benchmark: Benchmark
    records: list[ImageRecord]
    meta: dict[str, Any] | None  # run.json; None for bring-your-own-images folders


def resolve_run(
    run_dir: str | Path,
    *,
    benchmark: str | None = None,
    data: str | Path | None = None,
    spec: str | Path | None = None,
    box: Sequence[float] | None = None,
    references: str | None = None,
    index: str | Path | None = None,
) -> RunInputs:
    """Find the benchmark, data and image records of a run folder (ours or bring-your-own)."""
    run = RunFolder(run_dir)
    if not run.root.is_dir():
        raise InputError("run", "must be an existing run folder", str(run.root))
    meta = run.read_meta()
    if meta is not None:
        if benchmark and canonical_name(benchmark) != meta["benchmark"]:
            raise InputError(
                "benchmark", f"the run folder holds a {meta['benchmark']} run", benchmark
            )
        options = meta.get("benchmark_options", {})
        if box is not None and list(box) != options.get("box"):
            raise InputError("box", f"the run was generated with box {options.get('box')}", box)
        bench = load_benchmark(
            meta["benchmark"],
            data or meta["data_dir"],
            spec=spec,
            box=options.get("box"),
            references=references or "all",
        )
        if bench.options != options:
            raise InputError(
                "run",
                f"was generated with benchmark options {options}, not "
                f"{bench.options} (another --spec?)",
                str(run.root),
            )
    else:
        if not benchmark or not data:
            raise InputError(
                "run",
                "has no run.json (bring-your-own images): pass --benchmark and --data",
                str(run.root),
            )
        bench = load_benchmark(benchmark, data, spec=spec, box=box, references=references or "all")
    if index is not None:
        records = run.read_index(index)
    elif run.index_path.exists():
        records = run.read_index()
    else:
        records = run.discover()
    if not records:
        raise InputError("run", "holds no images", str(run.root))
    _check_records(records, bench, run)
    return RunInputs(run, bench, records, meta)


def _check_records(records: list[ImageRecord], bench: Benchmark, run: RunFolder) -> None:
    unknown = [r.sample_id for r in records if bench.get(r.sample_id) is None]
    if unknown:
        raise InputError(
            "run",
            f"{len(unknown)} of {len(records)} images name samples that "
            f"{bench.name} does not have — a run of another benchmark, or a wrong "
            "folder layout (images/<sample_id>/<k>.png)",
            unknown[:3],
        )
    dup = [k for k, n in Counter((r.sample_id, r.index) for r in records).items() if n > 1]
    if dup:
        raise InputError("run", "lists the same (sample, image index) more than once", dup[:3])
    changed = [
        r.sample_id
        for r in records
        if r.prompt is not None and r.prompt != bench.get(r.sample_id).prompt
    ]
    if changed:
        raise InputError(
            "run", "index prompts differ from the benchmark's (was the spec changed?)", changed[:3]
        )
