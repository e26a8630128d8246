"""The benchmarks as data: MS-Bench (multi-subject) and DreamBench (single-subject) — what
``msdiffusion eval`` generates and scores, and the web UI's example layouts come from.

A benchmark is a fixed list of :class:`BenchSample` — a prompt and its subjects, each with a phrase,
a box in the output image and reference images — enumerated from the benchmark's definition and
checked against the images found in a data folder. Samples whose conditioning reference is missing
are *skipped*, named and counted (never silently dropped); everything else is kept in definition
order, so a sample's id and position never depend on what is on disk.

- **MS-Bench**: the packaged ``specs/msbench.json`` (or ``spec=``) and the images
  ``<category>/<name>.(jpg|png)``.
  Every combination type: a category used k times contributes every k-subset of its subjects,
  categories combine as a cartesian product, every prompt template of the type renders each
  combination with the subjects' class names. 1148 combinations, 4488 samples.
- **DreamBench**: ``<subject>/NN.jpg`` + ``prompts_and_classes.txt`` as published by DreamBooth.
  30 subjects × 25 prompts = 750 samples in the zero-shot form "a {class} …" (the unique token
  dropped); cats and dogs get the live-subject prompts. The conditioning reference is the first
  image by file name (``00.jpg``); scoring compares with all of the subject's images (the DreamBooth
  protocol) unless ``references="first"``. Default box: :data:`DREAMBENCH_DEFAULT_BOX`.
- **toy**: the toy world's benchmark (``msdiffusion.toyworld.bench``), ``toy/spec.json`` + its
  references as ``msdiffusion eval standin`` writes them: held-out identities in 1-, 2- and
  3-subject prompts with preset boxes, scored with the world's exact metrics.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import InputError
from .geometry import Box

__all__ = [
    "BENCHMARKS",
    "DREAMBENCH_DEFAULT_BOX",
    "IMAGE_EXTENSIONS",
    "BenchSample",
    "BenchSubject",
    "Benchmark",
    "canonical_name",
    "load_benchmark",
    "load_msbench_spec",
    "load_toy_spec",
    "parse_dreambench_prompts",
]

BENCHMARKS = ("msbench", "dreambench", "toy")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
DREAMBENCH_DEFAULT_BOX: Box = (0.25, 0.25, 0.75, 0.75)  # centred, half the width and height
DREAMBENCH_SUBJECTS, DREAMBENCH_PROMPTS = 30, 25
LIVE_CLASSES = frozenset({"cat", "dog"})  # DreamBooth's 9 live subjects are its cats and dogs
_ID_SAFE = re.compile(r"^[A-Za-z0-9_.+\-]+$")


@dataclass(frozen=True)
class BenchSubject:
    """One subject of a sample. Paths are relative to the benchmark's data folder (posix)."""

    name: str  # the subject's id: "dog2", "t-shirt", "backpack_dog"
    phrase: str  # its class name, used as the grounding phrase and the detector query
    box: Box  # (x0, y0, x1, y1), normalised to the output image
    image: str  # the reference the generator is conditioned on
    references: tuple[str, ...]  # the references identity metrics compare with
    category: str = ""  # MS-Bench: its category ("living"); DreamBench: live/object; toy: class

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phrase": self.phrase,
            "box": list(self.box),
            "image": self.image,
            "references": list(self.references),
            "category": self.category,
        }


@dataclass(frozen=True)
class BenchSample:
    """A prompt with its subjects. ``id`` is unique and path-safe: ``group/combination/prompt``."""

    id: str
    group: str  # MS-Bench combination type, or DreamBench "live" / "object"
    combination: str  # the id without the prompt index: one subject set
    prompt: str
    subjects: tuple[BenchSubject, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sample_id": self.id,
            "group": self.group,
            "combination": self.combination,
            "prompt": self.prompt,
            "subjects": [s.to_dict() for s in self.subjects],
        }


@dataclass
class Benchmark:
    """An enumerated benchmark over one data folder."""

    name: str
    data_dir: Path
    samples: list[BenchSample]  # every sample of the definition, runnable or not, in order
    missing: list[str]  # conditioning references not found (relative paths), sorted
    options: dict[str, Any] = field(default_factory=dict)  # what changes generation (box, spec)
    definition: dict[str, Any] = field(default_factory=dict)  # provenance (spec sha256, files)

    def __post_init__(self) -> None:
        self._by_id = {s.id: s for s in self.samples}
        assert len(self._by_id) == len(self.samples), "duplicate sample ids"
        missing = set(self.missing)
        self.skipped: dict[str, list[str]] = {}  # sample id -> missing references
        for s in self.samples:
            lost = [sub.image for sub in s.subjects if sub.image in missing]
            if lost:
                self.skipped[s.id] = lost

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(s.group for s in self.samples))

    @property
    def runnable(self) -> list[BenchSample]:
        return [s for s in self.samples if s.id not in self.skipped]

    def get(self, sample_id: str) -> BenchSample | None:
        return self._by_id.get(sample_id)

    def path(self, relative: str) -> Path:
        """The absolute path of a data file named relative to the data folder."""
        return self.data_dir / relative

    def counts(self) -> list[dict[str, Any]]:
        """Per group: combinations, samples, runnable, skipped — then a ``total`` row."""
        rows = []
        for group in self.groups + ["total"]:
            members = [s for s in self.samples if group in ("total", s.group)]
            skipped = sum(s.id in self.skipped for s in members)
            rows.append(
                {
                    "group": group,
                    "combinations": len({s.combination for s in members}),
                    "samples": len(members),
                    "runnable": len(members) - skipped,
                    "skipped": skipped,
                }
            )
        return rows

    def select(
        self, *, groups: Sequence[str] | None = None, limit: int | None = None
    ) -> list[BenchSample]:
        """Runnable samples of ``groups`` (all by default), in benchmark order.

        ``limit`` keeps that many in total, round-robin over the groups (a small subset still
        covers every group); within a group, in a fixed pseudo-random order (a hash of the sample
        id), so a subset spreads over combinations and prompts, and a larger limit always
        contains a smaller one (a resumed run keeps what it made).
        """
        if groups:
            unknown = sorted(set(groups) - set(self.groups))
            if unknown:
                raise InputError(
                    "groups", f"unknown for {self.name} (known: {', '.join(self.groups)})", unknown
                )
        chosen = [s for s in self.runnable if not groups or s.group in groups]
        if limit is None:
            return chosen
        if limit < 1:
            raise InputError("limit", "must be >= 1", limit)
        by_group: dict[str, list[BenchSample]] = {}
        for s in sorted(chosen, key=lambda s: hashlib.sha256(s.id.encode()).digest()):
            by_group.setdefault(s.group, []).append(s)
        interleaved = [s for row in itertools.zip_longest(*by_group.values()) for s in row if s]
        keep = {s.id for s in interleaved[:limit]}
        return [s for s in chosen if s.id in keep]

    def missing_report(self) -> str:
        """One line naming the missing references and the samples they cost ('' if none)."""
        if not self.missing:
            return ""
        per_group = Counter(self.get(i).group for i in self.skipped)
        groups = ", ".join(f"{g} {n}" for g, n in per_group.items())
        return (
            f"{self.name}: {len(self.missing)} reference image(s) missing in {self.data_dir}: "
            f"{', '.join(self.missing)} — {len(self.skipped)} of {len(self.samples)} samples "
            f"skipped ({groups})"
        )

    def table(self) -> str:
        """The counts as an aligned text table (what ``msdiffusion eval list`` prints)."""
        width = max(len(r["group"]) for r in self.counts())
        lines = [f"{'group':<{width}}  combinations  samples  runnable  skipped"]
        for r in self.counts():
            lines.append(
                f"{r['group']:<{width}}  {r['combinations']:>12}  {r['samples']:>7}  "
                f"{r['runnable']:>8}  {r['skipped']:>7}"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Shared helpers


def _resolve_data_dir(data_dir: str | Path, name: str, marker: Iterable[str]) -> Path:
    """``data_dir`` itself, or its sub-folder for this benchmark if it is a parent folder."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise InputError("data", "must be an existing folder with the benchmark images", str(root))
    markers = list(marker)
    if any((root / m).exists() for m in markers):
        return root.resolve()
    for child in (name, "dataset", "data"):  # the hub/repo layouts people download
        if any((root / child / m).exists() for m in markers):
            return (root / child).resolve()
    raise InputError(
        "data",
        f"does not look like {name} (none of {', '.join(markers[:4])} "
        f"found, nor under {name}/); see docs/evaluation.md for how to get it",
        str(root),
    )


def _find_image(root: Path, relative: str) -> str | None:
    """``relative`` if it exists, else the same stem with another image extension, else None."""
    if (root / relative).is_file():
        return relative
    stem = Path(relative).with_suffix("")
    for ext in IMAGE_EXTENSIONS:
        for candidate in (stem.with_suffix(ext), stem.with_suffix(ext.upper())):
            if (root / candidate).is_file():
                return candidate.as_posix()
    return None


def _check_id(part: str, what: str) -> str:
    if not _ID_SAFE.match(part):
        raise InputError(what, "must use only letters, digits and _ . + -", part)
    return part


# ----------------------------------------------------------------------------------------------
# MS-Bench


def load_msbench_spec(path: str | Path | None = None) -> tuple[dict[str, Any], str]:
    """The MS-Bench definition (the packaged one by default) and its sha256."""
    if path is None:
        raw = resources.files("msdiffusion").joinpath("specs/msbench.json").read_bytes()
    else:
        try:
            raw = Path(path).read_bytes()
        except OSError as err:
            raise InputError("spec", "must be a readable MS-Bench spec.json", str(path)) from err
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as err:
        raise InputError(
            "spec", f"is not valid JSON ({err.msg}, line {err.lineno})", str(path)
        ) from err
    _validate_spec(spec)
    return spec, hashlib.sha256(raw).hexdigest()


def _validate_spec(spec: Any) -> None:
    need = ("classes", "categories", "files", "combination_types")
    if not isinstance(spec, dict) or any(k not in spec for k in need):
        raise InputError("spec", f"must be an object with keys {', '.join(need)}", type(spec))
    for cat, names in spec["categories"].items():
        for name in names:
            if name not in spec["classes"] or name not in spec["files"]:
                raise InputError("spec", f"subject of category {cat} has no class or file", name)
    for ctype, t in spec["combination_types"].items():
        cats, boxes, prompts = t.get("categories"), t.get("boxes"), t.get("prompts")
        if not cats or not prompts or boxes is None or len(boxes) != len(cats):
            raise InputError(
                "spec", f"type {ctype} needs categories, one box per category and prompts", t
            )
        unknown = [c for c in cats if c not in spec["categories"]]
        if unknown:
            raise InputError("spec", f"type {ctype} uses unknown categories", unknown)
        for box in boxes:
            x0, y0, x1, y1 = box
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise InputError(
                    "spec",
                    f"type {ctype}: box must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1",
                    box,
                )
        for template in prompts:
            try:
                template.format(*(["x"] * len(cats)))
            except (IndexError, KeyError) as err:
                raise InputError(
                    "spec",
                    f"type {ctype}: prompt template uses a placeholder beyond {{{len(cats) - 1}}}",
                    template,
                ) from err


def _msbench_combinations(categories: Sequence[str], members: dict[str, list[str]]):
    """Subject tuples in ``categories`` order: k-subsets per repeated category, crossed."""
    distinct = list(dict.fromkeys(categories))
    choices = [list(itertools.combinations(members[c], categories.count(c))) for c in distinct]
    for choice in itertools.product(*choices):
        pick = {c: iter(subset) for c, subset in zip(distinct, choice, strict=True)}
        yield tuple(next(pick[c]) for c in categories)


def _load_msbench(data_dir: str | Path, spec_path: str | Path | None) -> Benchmark:
    spec, sha = load_msbench_spec(spec_path)
    root = _resolve_data_dir(data_dir, "msbench", list(spec["categories"]))
    found = {name: _find_image(root, rel) for name, rel in spec["files"].items()}
    category_of = {n: cat for cat, names in spec["categories"].items() for n in names}
    samples, combos = [], 0
    for ctype, t in spec["combination_types"].items():
        _check_id(ctype, "spec")
        boxes = [tuple(float(v) for v in b) for b in t["boxes"]]
        for names in _msbench_combinations(t["categories"], spec["categories"]):
            combos += 1
            subjects = tuple(
                BenchSubject(
                    name=n,
                    phrase=spec["classes"][n],
                    box=box,
                    image=found[n] or spec["files"][n],
                    references=(found[n] or spec["files"][n],),
                    category=category_of[n],
                )
                for n, box in zip(names, boxes, strict=True)
            )
            combination = f"{ctype}/{'+'.join(_check_id(n, 'spec') for n in names)}"
            for p, template in enumerate(t["prompts"]):
                samples.append(
                    BenchSample(
                        id=f"{combination}/{p}",
                        group=ctype,
                        combination=combination,
                        prompt=template.format(*(s.phrase for s in subjects)),
                        subjects=subjects,
                    )
                )
    expected = spec.get("expected", {})
    declared = (expected.get("combinations"), expected.get("samples"))
    if expected and declared != (combos, len(samples)):
        raise InputError(
            "spec",
            f"enumerates {combos} combinations / {len(samples)} samples, but "
            f"declares {expected.get('combinations')} / {expected.get('samples')}",
            str(spec_path or "packaged msbench.json"),
        )
    used = {s.image for sample in samples for s in sample.subjects}
    missing = sorted(
        rel for name, rel in spec["files"].items() if found[name] is None and rel in used
    )
    return Benchmark(
        name="msbench",
        data_dir=root,
        samples=samples,
        missing=missing,
        options={"spec_sha256": sha},
        definition={
            "spec": str(spec_path) if spec_path else "packaged:specs/msbench.json",
            "spec_sha256": sha,
            "combinations": combos,
            "images_per_sample_in_paper": spec.get("images_per_sample_in_paper"),
        },
    )


# ----------------------------------------------------------------------------------------------
# DreamBench

_PROMPT_LINE = re.compile(
    r"""^\s*(['"])(.*)\1\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)"""
)


def parse_dreambench_prompts(text: str) -> tuple[dict[str, str], list[str], list[str]]:
    """``prompts_and_classes.txt`` as DreamBooth publishes it → (classes, object, live templates).

    Templates keep DreamBooth's ``{0}`` (unique token) and ``{1}`` (class) placeholders.
    """
    classes: dict[str, str] = {}
    lists: dict[str, list[str]] = {"object": [], "live": []}
    section, in_classes = None, False
    for line in text.splitlines():
        stripped = line.strip()
        low = stripped.lower()
        if low == "subject_name,class":
            in_classes = True
            continue
        if in_classes:
            if not stripped or "," not in stripped:
                in_classes = not stripped and not classes
                continue
            name, cls = (p.strip() for p in stripped.split(",", 1))
            classes[name] = cls
            continue
        if low.startswith("object prompts"):
            section = "object"
        elif low.startswith("live subject prompts"):
            section = "live"
        elif section and (m := _PROMPT_LINE.match(line)):
            lists[section].append(m.group(2))
    return classes, lists["object"], lists["live"]


def _zero_shot(template: str, cls: str) -> str:
    """DreamBooth's 'a {0} {1} in the snow' without the unique token: 'a dog in the snow'."""
    return " ".join(template.format("", cls).split())


def _load_dreambench(
    data_dir: str | Path, box: Sequence[float] | None, references: str
) -> Benchmark:
    if references not in ("all", "first"):
        raise InputError("references", "must be 'all' or 'first'", references)
    box = tuple(float(v) for v in (box if box is not None else DREAMBENCH_DEFAULT_BOX))
    if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
        raise InputError(
            "box", "must be x0,y0,x1,y1 with 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1", box
        )
    root = _resolve_data_dir(data_dir, "dreambench", ["prompts_and_classes.txt"])
    prompts_file = root / "prompts_and_classes.txt"
    text = prompts_file.read_text(encoding="utf-8")
    classes, object_prompts, live_prompts = parse_dreambench_prompts(text)
    if (len(classes), len(object_prompts), len(live_prompts)) != (
        DREAMBENCH_SUBJECTS,
        DREAMBENCH_PROMPTS,
        DREAMBENCH_PROMPTS,
    ):
        raise InputError(
            "data",
            f"{prompts_file.name} must list {DREAMBENCH_SUBJECTS} subjects "
            f"and {DREAMBENCH_PROMPTS} object + {DREAMBENCH_PROMPTS} live prompts",
            (len(classes), len(object_prompts), len(live_prompts)),
        )
    samples, missing = [], []
    for name, cls in classes.items():
        folder = root / _check_id(name, "data")
        files = (
            sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if folder.is_dir()
            else []
        )
        if not files:
            missing.append(f"{name}/00.jpg")
        refs = tuple(f"{name}/{f}" for f in files) or (f"{name}/00.jpg",)
        group = "live" if cls in LIVE_CLASSES else "object"
        subject = BenchSubject(
            name=name,
            phrase=cls,
            box=box,
            image=refs[0],
            references=refs if references == "all" else refs[:1],
            category=group,
        )
        for p, template in enumerate(live_prompts if group == "live" else object_prompts):
            samples.append(
                BenchSample(
                    id=f"{group}/{name}/{p}",
                    group=group,
                    combination=f"{group}/{name}",
                    prompt=_zero_shot(template, cls),
                    subjects=(subject,),
                )
            )
    sha = hashlib.sha256(text.encode()).hexdigest()
    return Benchmark(
        name="dreambench",
        data_dir=root,
        samples=samples,
        missing=sorted(missing),
        options={"box": list(box)},
        definition={
            "prompts_file": str(prompts_file),
            "prompts_sha256": sha,
            "conditioning_reference": "first image by file name (00.jpg)",
            "scoring_references": references,
        },
    )


def load_toy_spec(data_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """The toy benchmark's folder and its ``spec.json`` (validated format)."""
    root = _resolve_data_dir(data_dir, "toy", ["spec.json"])
    path = root / "spec.json"
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(
            "data",
            f"toy/spec.json is unreadable ({err.__class__.__name__}); "
            "write it again with `msdiffusion eval standin DIR`",
            str(path),
        ) from None
    if not isinstance(spec, dict) or spec.get("format") != "msdiffusion-toy-benchmark":
        raise InputError(
            "data", "is not a toy benchmark spec (format msdiffusion-toy-benchmark)", str(path)
        )
    return root, spec


def _load_toy(data_dir: str | Path) -> Benchmark:
    root, spec = load_toy_spec(data_dir)
    samples = []
    for entry in spec["samples"]:
        subjects = tuple(
            BenchSubject(
                name=s["name"],
                phrase=s["phrase"],
                box=tuple(s["box"]),
                image=s["image"],
                references=(s["image"],),
                category=s["phrase"],
            )
            for s in entry["subjects"]
        )
        samples.append(
            BenchSample(
                id=entry["sample_id"],
                group=entry["group"],
                combination=entry["combination"],
                prompt=entry["prompt"],
                subjects=subjects,
            )
        )
    needed = sorted(
        {s.image for x in samples for s in x.subjects}
        | {d["image"] for e in spec["samples"] for d in e["distractors"]}
    )
    missing = [p for p in needed if not (root / p).is_file()]
    digest = hashlib.sha256((root / "spec.json").read_bytes()).hexdigest()
    return Benchmark(
        "toy",
        root,
        samples,
        missing,
        options={},
        definition={
            "spec": str(root / "spec.json"),
            "spec_sha256": digest,
            "world_seed": spec.get("world_seed"),
            "candidates": spec.get("candidates"),
        },
    )


def load_benchmark(
    name: str,
    data_dir: str | Path,
    *,
    spec: str | Path | None = None,
    box: Sequence[float] | None = None,
    references: str = "all",
) -> Benchmark:
    """Enumerate benchmark ``name`` ("msbench" | "dreambench" | "toy") over ``data_dir``.

    ``spec`` replaces the packaged MS-Bench definition; ``box`` and ``references`` are DreamBench's
    subject box and scoring references ("all" of the subject's images, or the "first").
    """
    key = canonical_name(name)
    if key == "msbench":
        if box is not None:
            raise InputError(
                "box", "MS-Bench boxes are part of the benchmark; --box is for dreambench", box
            )
        return _load_msbench(data_dir, spec)
    if spec is not None:
        raise InputError("spec", "is an MS-Bench option", spec)
    if key == "toy":
        if box is not None:
            raise InputError(
                "box", "toy boxes are part of the benchmark; --box is for dreambench", box
            )
        return _load_toy(data_dir)
    return _load_dreambench(data_dir, box, references)


def canonical_name(name: str) -> str:
    """ "MS-Bench", "ms_bench", "msbench" -> "msbench"; "DreamBooth" -> "dreambench"."""
    key = str(name).lower().replace("-", "").replace("_", "")
    key = "dreambench" if key == "dreambooth" else key
    if key not in BENCHMARKS:
        raise InputError("benchmark", f"must be one of {', '.join(BENCHMARKS)}", name)
    return key
