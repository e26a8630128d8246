"""Training manifests — the format ``msdiffusion data`` writes and ``msdiffusion train`` reads:
read, validate, summarise (`msdiffusion data check`), write.

A manifest is JSONL, one record per target image (docs/training-data.md)::

    {"id": "clip0042_f12", "image": "images/clip0042_f12.jpg", "caption": "a dog on a sofa",
     "subjects": [{"phrase": "dog", "box": [0.1, 0.3, 0.55, 0.95],
                   "reference": "refs/clip0042_f80.jpg", "reference_box": [0.2, 0.1, 0.7, 0.9],
                   "reference_mask": null, "augmented": false}],
     "meta": {"source": "..."}}

Boxes are ``[x0, y0, x1, y1]`` normalised to [0, 1] of their image (x = column); paths are relative
to the manifest's folder. Records are checked in two passes: ``parse_record`` (schema, boxes,
phrases — no I/O) and ``check_record_files`` (files exist; optionally readable, with sizes).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import atomic_open
from .errors import InputError
from .geometry import Box, validate_box
from .layout import find_phrase

__all__ = [
    "SubjectEntry",
    "Record",
    "RecordProblem",
    "ManifestScan",
    "parse_record",
    "check_record_files",
    "scan_manifest",
    "decode_line",
    "write_manifest",
    "format_report",
]

RECORD_KEYS = {"id", "image", "caption", "subjects", "meta"}
SUBJECT_KEYS = {"phrase", "box", "reference", "reference_box", "reference_mask", "augmented"}


@dataclass(frozen=True)
class SubjectEntry:
    """One subject of a record: its reference, where it is in the target, and its phrase."""

    phrase: str
    box: Box  # in the target image, normalised
    reference: str  # path relative to the manifest
    reference_box: Box | None = None  # in the reference image, normalised; None = whole image
    reference_mask: str | None = None  # L/1 PNG the size of the reference; > 50 % = subject
    augmented: bool = False  # the reference is an augmented crop of the target itself


@dataclass(frozen=True)
class Record:
    """One training sample as the manifest gives it (paths still relative)."""

    id: str
    image: str
    caption: str
    subjects: tuple[SubjectEntry, ...]
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    line: int = 0  # 1-based line in the manifest, for error messages

    def paths(self) -> list[tuple[str, str]]:
        """(field name, relative path) of every file the record uses."""
        out = [("image", self.image)]
        for i, s in enumerate(self.subjects):
            out.append((f"subjects[{i}].reference", s.reference))
            if s.reference_mask is not None:
                out.append((f"subjects[{i}].reference_mask", s.reference_mask))
        return out

    def to_json(self) -> dict[str, Any]:
        subjects = [
            {
                "phrase": s.phrase,
                "box": list(s.box),
                "reference": s.reference,
                "reference_box": None if s.reference_box is None else list(s.reference_box),
                "reference_mask": s.reference_mask,
                "augmented": s.augmented,
            }
            for s in self.subjects
        ]
        out = {"id": self.id, "image": self.image, "caption": self.caption, "subjects": subjects}
        if self.meta:
            out["meta"] = self.meta
        return out


class RecordProblem(InputError):
    """Why a record cannot be used; ``kind`` groups problems in summaries."""

    def __init__(
        self,
        kind: str,
        argument: str,
        rule: str,
        value: Any = None,
        *,
        line: int = 0,
        record_id: str | None = None,
    ):
        super().__init__(argument, rule, value)
        self.kind, self.line, self.record_id = kind, line, record_id

    def located(self, line: int, record_id: str | None) -> RecordProblem:
        return RecordProblem(
            self.kind, self.argument, self.rule, self.value, line=line, record_id=record_id
        )

    def describe(self) -> str:
        where = f"line {self.line}" + (f" (id {self.record_id!r})" if self.record_id else "")
        return f"{where}: {self}"


# ---- pass 1: schema, boxes, phrases ------------------------------------------------------------


def parse_record(obj: Any, line: int = 0) -> Record:
    """A decoded JSON line → Record; raises RecordProblem for the first thing wrong."""
    if not isinstance(obj, dict):
        raise RecordProblem("schema", "record", "must be a JSON object", type(obj).__name__)
    unknown = sorted(set(obj) - RECORD_KEYS)
    if unknown:
        raise RecordProblem(
            "schema",
            unknown[0],
            "unknown key (allowed: id, image, caption, subjects, meta)",
            unknown,
        )
    record_id = _string(obj, "id", "id")
    image = _string(obj, "image", "image")
    caption = obj.get("caption")
    if not isinstance(caption, str):
        raise RecordProblem("schema", "caption", "must be a string", caption)
    subjects_raw = obj.get("subjects")
    if not isinstance(subjects_raw, list) or not subjects_raw:
        raise RecordProblem("schema", "subjects", "must be a non-empty list", subjects_raw)
    subjects = tuple(_parse_subject(s, i, caption) for i, s in enumerate(subjects_raw))
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise RecordProblem("schema", "meta", "must be an object or absent", meta)
    return Record(record_id, image, caption, subjects, meta, line)


def _parse_subject(obj: Any, i: int, caption: str) -> SubjectEntry:
    name = f"subjects[{i}]"
    if not isinstance(obj, dict):
        raise RecordProblem("schema", name, "must be an object", type(obj).__name__)
    unknown = sorted(set(obj) - SUBJECT_KEYS)
    if unknown:
        raise RecordProblem("schema", f"{name}.{unknown[0]}", "unknown key", unknown)
    phrase = _string(obj, "phrase", f"{name}.phrase")
    if find_phrase(caption, phrase) is None:
        raise RecordProblem(
            "phrase",
            f"{name}.phrase",
            "does not appear in the caption (whole words, case-insensitive)",
            phrase,
        )
    box = _box(obj.get("box"), f"{name}.box")
    reference = _string(obj, "reference", f"{name}.reference")
    ref_box = obj.get("reference_box")
    ref_box = None if ref_box is None else _box(ref_box, f"{name}.reference_box")
    mask = obj.get("reference_mask")
    if mask is not None and (not isinstance(mask, str) or not mask):
        raise RecordProblem("schema", f"{name}.reference_mask", "must be a path or null", mask)
    augmented = obj.get("augmented", False)
    if not isinstance(augmented, bool):
        raise RecordProblem("schema", f"{name}.augmented", "must be true or false", augmented)
    return SubjectEntry(phrase, box, reference, ref_box, mask, augmented)


def _string(obj: dict[str, Any], key: str, name: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RecordProblem("schema", name, "must be a non-empty string", value)
    return value


def _box(value: Any, name: str) -> Box:
    if isinstance(value, str):  # validate_box accepts "x0,y0,x1,y1"; a manifest must not
        raise RecordProblem("box", name, "must be a list of four numbers", value)
    try:
        return validate_box(value, name)
    except InputError as err:
        raise RecordProblem("box", err.argument, err.rule, err.value) from None


# ---- pass 2: files ------------------------------------------------------------------------------


@dataclass
class FileInfo:
    """Sizes found while checking a record's files (None where images were not opened)."""

    image_size: tuple[int, int] | None = None  # (width, height)


def check_record_files(
    record: Record, root: Path, *, open_images: bool = False, decode: bool = False
) -> FileInfo:
    """Check that the record's files exist (and, if asked, open as images of matching sizes).

    ``open_images`` reads each header (fast) and checks masks against their reference's size;
    ``decode`` also decodes every pixel, which finds truncated files (slow). Raises RecordProblem.
    """
    for name, rel in record.paths():
        if not (root / rel).is_file():
            raise RecordProblem("missing file", name, "file does not exist", rel)
    info = FileInfo()
    if not open_images:
        return info
    info.image_size = _image_size(root / record.image, "image", decode)
    for i, s in enumerate(record.subjects):
        ref_size = _image_size(root / s.reference, f"subjects[{i}].reference", decode)
        if s.reference_mask is not None:
            mask_size = _image_size(
                root / s.reference_mask, f"subjects[{i}].reference_mask", decode
            )
            if mask_size != ref_size:
                raise RecordProblem(
                    "mask size",
                    f"subjects[{i}].reference_mask",
                    f"must be the reference's size {ref_size}",
                    mask_size,
                )
    return info


def _image_size(path: Path, name: str, decode: bool) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            size = im.size
            if decode:
                im.load()
    except Exception as err:  # any failure of the decoder on these bytes (a decompression bomb, …)
        raise RecordProblem(
            "unreadable image",
            name,
            f"is not a readable image ({err.__class__.__name__})",
            str(path),
        ) from None
    if size[0] < 1 or size[1] < 1:
        raise RecordProblem("unreadable image", name, "has no pixels", str(path))
    return size


# ---- whole manifests --------------------------------------------------------------------------


@dataclass
class ManifestScan:
    """The usable records of a manifest, and what was wrong with the others."""

    path: Path
    records: list[Record]
    problems: list[RecordProblem]
    total: int  # non-empty lines
    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.path.parent

    def summary(self) -> dict[str, Any]:
        per_record = Counter(len(r.subjects) for r in self.records)
        subjects = [s for r in self.records for s in r.subjects]
        out: dict[str, Any] = {
            "manifest": str(self.path),
            "records": self.total,
            "valid": len(self.records),
            "with_problems": len(self.problems),
            "problems_by_kind": dict(Counter(p.kind for p in self.problems).most_common()),
            "subjects_per_record": {str(k): per_record[k] for k in sorted(per_record)},
            "subjects": len(subjects),
            "augmented_references": sum(s.augmented for s in subjects),
            "reference_masks": sum(s.reference_mask is not None for s in subjects),
        }
        if self.image_sizes:
            widths = [w for w, _ in self.image_sizes]
            heights = [h for _, h in self.image_sizes]
            shorts = [min(s) for s in self.image_sizes]
            out["image_sizes"] = {
                "width": _stats(widths),
                "height": _stats(heights),
                "short_side": _stats(shorts),
                "most_common": [
                    [f"{w}x{h}", n] for (w, h), n in Counter(self.image_sizes).most_common(5)
                ],
            }
        return out


def _stats(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def decode_line(raw: bytes, number: int) -> Any:
    """One manifest line (bytes) → decoded JSON, or a RecordProblem saying why it is not JSON."""
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as err:
        return RecordProblem(
            "encoding",
            "line",
            f"is not valid UTF-8 (byte {raw[err.start]:#04x} at column {err.start + 1})",
            raw.strip()[:80].decode("utf-8", "replace"),
            line=number,
        )
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        reason = err.msg if isinstance(err, json.JSONDecodeError) else "nested too deeply"
        return RecordProblem(
            "schema", "line", f"is not valid JSON ({reason})", text.strip()[:80], line=number
        )


def iter_manifest(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded JSON or a RecordProblem) for every non-empty line."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if raw.strip():
                yield number, decode_line(raw, number)


def scan_manifest(
    path: str | Path,
    *,
    check_files: bool = True,
    open_images: bool = False,
    decode: bool = False,
    workers: int = 8,
    progress: bool = False,
) -> ManifestScan:
    """Parse and check every record; bad ones land in ``problems`` with line, id and reason.

    Duplicate ids, and records identical to an earlier one (same image, caption and subjects),
    are problems too (the later record is the one left out).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("manifest", "file does not exist", str(path))
    parsed: list[Record] = []
    problems: list[RecordProblem] = []
    total = 0
    seen_ids: dict[str, int] = {}
    seen_content: dict[Any, int] = {}
    for number, obj in iter_manifest(path):
        total += 1
        if isinstance(obj, RecordProblem):
            problems.append(obj)
            continue
        raw_id = obj.get("id") if isinstance(obj, dict) else None
        try:
            record = parse_record(obj, number)
        except RecordProblem as err:
            problems.append(err.located(number, raw_id if isinstance(raw_id, str) else None))
            continue
        if record.id in seen_ids:
            problems.append(
                RecordProblem(
                    "duplicate",
                    "id",
                    f"repeats line {seen_ids[record.id]}",
                    record.id,
                    line=number,
                    record_id=record.id,
                )
            )
            continue
        content = (record.image, record.caption, record.subjects)
        if content in seen_content:
            problems.append(
                RecordProblem(
                    "duplicate",
                    "record",
                    f"has the same image, caption and subjects as line {seen_content[content]}",
                    record.image,
                    line=number,
                    record_id=record.id,
                )
            )
            continue
        seen_ids[record.id] = number
        seen_content[content] = number
        parsed.append(record)

    records, sizes = parsed, []
    if check_files:
        root = path.parent

        def check(record: Record) -> FileInfo | RecordProblem:
            try:
                return check_record_files(record, root, open_images=open_images, decode=decode)
            except RecordProblem as err:
                return err.located(record.line, record.id)

        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(
                tqdm(
                    pool.map(check, parsed),
                    total=len(parsed),
                    desc="checking files",
                    disable=not progress,
                    unit="record",
                )
            )
        records = []
        for record, result in zip(parsed, results, strict=True):
            if isinstance(result, RecordProblem):
                problems.append(result)
            else:
                records.append(record)
                if result.image_size is not None:
                    sizes.append(result.image_size)
    problems.sort(key=lambda p: p.line)
    return ManifestScan(path, records, problems, total, sizes)


def write_manifest(records: Iterable[Record | dict[str, Any]], path: str | Path) -> Path:
    """Write records as JSONL atomically (a temp file, then ``os.replace``)."""
    path = Path(path)
    with atomic_open(path) as handle:
        for record in records:
            obj = record.to_json() if isinstance(record, Record) else record
            handle.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


# ---- the summary `msdiffusion data check` prints ----------------------------------------------


def format_report(scan: ManifestScan, max_problems: int = 20) -> str:
    """Human-readable summary + the first ``max_problems`` problems."""
    s = scan.summary()
    lines = [
        f"manifest: {s['manifest']}",
        f"records: {s['records']}  valid: {s['valid']}  with problems: {s['with_problems']}",
    ]
    hist = ", ".join(f"{k}: {v}" for k, v in s["subjects_per_record"].items()) or "-"
    lines.append(f"subjects per record (valid records): {hist}")
    lines.append(
        f"subjects: {s['subjects']}  augmented references: {s['augmented_references']}"
        f"  reference masks: {s['reference_masks']}"
    )
    if "image_sizes" in s:
        sz = s["image_sizes"]
        lines.append(
            "image sizes: width {min}-{max} (median {median}), ".format(**sz["width"])
            + "height {min}-{max} (median {median}), ".format(**sz["height"])
            + "short side {min}-{max} (median {median})".format(**sz["short_side"])
        )
        lines.append("most common sizes: " + ", ".join(f"{k} ({n})" for k, n in sz["most_common"]))
    if scan.problems:
        kinds = ", ".join(f"{k}: {n}" for k, n in s["problems_by_kind"].items())
        lines.append(f"problems by kind: {kinds}")
        shown = scan.problems[:max_problems]
        lines.append(f"problems (first {len(shown)} of {len(scan.problems)}):")
        lines.extend("  " + p.describe() for p in shown)
    else:
        lines.append("no problems found")
    return "\n".join(lines)
