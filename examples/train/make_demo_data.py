"""Build the tiny demo training set from the repository's example subjects.

    python examples/train/make_demo_data.py --out outputs/train-demo/data

Writes target images (the subjects pasted at random boxes), references, a mask and
``train.jsonl`` (docs/training-data.md); `make train-demo` then trains the tiny preset on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from msdiffusion.training.demo import build_demo_manifest

SUBJECTS = Path(__file__).resolve().parents[1] / "subjects"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/train-demo/data", help="output folder")
    parser.add_argument("--subjects", default=str(SUBJECTS), help="folder of subject PNGs")
    parser.add_argument("--records", type=int, default=16, help="training records to make")
    parser.add_argument("--size", type=int, default=128, help="target image side in pixels")
    args = parser.parse_args()
    manifest = build_demo_manifest(
        args.out, args.subjects, num_records=args.records, size=args.size
    )
    print(f"manifest: {manifest}")


if __name__ == "__main__":
    main()
