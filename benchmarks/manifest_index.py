"""How training holds a JSONL manifest: the line index (byte offsets, nothing parsed) against
parsing every record, per process — time and memory.

    python benchmarks/manifest_index.py                       # 200 000 records (≈ 130 MB)
    python benchmarks/manifest_index.py --records 1000000

The records are synthetic, shaped like the data build's (two subjects, boxes, a caption, meta).
Time is measured untraced; memory is what ``tracemalloc`` sees allocated while the structure is
alive (a second pass). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path


def write_manifest(path: Path, records: int) -> int:
    subject = {
        "phrase": "dog",
        "box": [0.1234, 0.2345, 0.5678, 0.9123],
        "reference": "refs/clip000000_f0080_dog.jpg",
        "reference_box": [0.2, 0.1, 0.7, 0.9],
        "reference_mask": "masks/clip000000_f0080_dog.png",
        "augmented": False,
    }
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(records):
            record = {
                "id": f"clip{i:07d}_f0012",
                "image": f"images/clip{i:07d}_f0012.jpg",
                "caption": "a dog and a cat on a sofa in a living room",
                "subjects": [subject, {**subject, "phrase": "cat"}],
                "meta": {"source": f"clip{i:07d}.mp4", "frame": 12},
            }
            handle.write(json.dumps(record) + "\n")
    return path.stat().st_size


def measure(fn) -> tuple[float, int]:
    """(seconds, bytes allocated and alive afterwards): timed untraced, then traced."""
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    tracemalloc.start()
    kept = fn()
    size = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return seconds, size


def main() -> None:
    from msdiffusion.manifest import scan_manifest
    from msdiffusion.training.records import ManifestLines

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "manifest.jsonl"
        size = write_manifest(path, args.records)
        index_s, index_bytes = measure(lambda: ManifestLines.index(path))
        parse_s, parse_bytes = measure(lambda: scan_manifest(path, check_files=False))
    out = {
        "records": args.records,
        "manifest_mb": round(size / 1e6, 1),
        "index": {
            "seconds": round(index_s, 3),
            "mb_per_s": round(size / 1e6 / index_s, 1),
            "bytes_per_record": round(index_bytes / args.records, 1),
        },
        "parse": {
            "seconds": round(parse_s, 3),
            "mb_per_s": round(size / 1e6 / parse_s, 1),
            "bytes_per_record": round(parse_bytes / args.records, 1),
        },
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
