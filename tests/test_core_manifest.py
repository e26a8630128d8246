"""Manifests: parsing, every kind of bad record, `msdiffusion data check` output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from msdiffusion.cli import main
from msdiffusion.manifest import parse_record, scan_manifest, write_manifest
from msdiffusion.training.demo import build_demo_manifest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "subjects"


@pytest.fixture()
def demo(tmp_path) -> Path:
    return build_demo_manifest(
        tmp_path / "demo", EXAMPLES if EXAMPLES.is_dir() else None, num_records=6
    )


def _good(demo: Path) -> dict:
    return json.loads(demo.read_text().splitlines()[0])


def test_demo_manifest_is_clean_and_summarised(demo):
    scan = scan_manifest(demo, open_images=True)
    assert scan.problems == [] and len(scan.records) == scan.total == 6
    s = scan.summary()
    assert s["subjects_per_record"] == {"1": 3, "2": 3}
    assert s["image_sizes"]["most_common"] == [["96x96", 6]]
    assert s["reference_masks"] >= 1
    record = scan.records[0]
    assert parse_record(record.to_json(), record.line) == record  # round trip


def test_every_problem_kind_is_found_with_its_line(demo):
    good = _good(demo)
    root = demo.parent
    (root / "broken.png").write_bytes(b"not an image at all")
    Image.new("L", (5, 5), 255).save(root / "small_mask.png")

    def variant(**changes):
        record = json.loads(json.dumps(good))
        record.update({k: v for k, v in changes.items() if k != "subject"})
        if "subject" in changes:
            record["subjects"][0].update(changes["subject"])
        return record

    lines = [
        json.dumps(good),  # 1 ok
        "{not json",  # 2
        json.dumps(variant(id="a", image="missing.png")),  # 3 missing file
        json.dumps(variant(id="b", subject={"box": [0.6, 0.1, 0.2, 0.5]})),  # 4 bad box
        json.dumps(variant(id="c", subject={"box": [0.1, 0.1, 1.2, 0.5]})),  # 5 outside
        json.dumps(variant(id="d", subject={"phrase": "giraffe"})),  # 6 phrase
        json.dumps(good),  # 7 duplicate id
        json.dumps(variant(id="e")),  # 8 same content
        json.dumps(variant(id="f", image="broken.png")),  # 9 unreadable
        json.dumps(variant(id="g", subject={"reference_mask": "small_mask.png"})),  # 10 mask
        json.dumps(variant(id="h", extra=1)),  # 11 unknown key
        json.dumps(variant(id="i", subjects=[])),  # 12 no subjects
    ]
    manifest = root / "bad.jsonl"
    manifest.write_text("\n".join(lines) + "\n\n")
    scan = scan_manifest(manifest, open_images=True)
    found = {p.line: p.kind for p in scan.problems}
    assert found == {
        2: "schema",
        3: "missing file",
        4: "box",
        5: "box",
        6: "phrase",
        7: "duplicate",
        8: "duplicate",
        9: "unreadable image",
        10: "mask size",
        11: "schema",
        12: "schema",
    }
    assert [r.line for r in scan.records] == [1]
    assert scan.total == 12
    problem = next(p for p in scan.problems if p.line == 6)
    assert problem.record_id == "d" and "subjects[0].phrase" in problem.describe()


def test_data_check_command(demo, capsys):
    assert main(["data", "check", str(demo)]) == 0
    out = capsys.readouterr().out
    assert "records: 6" in out and "no problems found" in out
    lines = demo.read_text().splitlines()
    demo.write_text("\n".join(lines + [lines[0]]) + "\n")
    assert main(["data", "check", str(demo), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["with_problems"] == 1 and report["problems"][0]["kind"] == "duplicate"
    assert main(["data", "check", str(demo.parent / "nope.jsonl")]) == 2  # a user error


def test_write_manifest_is_atomic_and_round_trips(tmp_path, demo):
    records = scan_manifest(demo).records
    out = write_manifest(records, tmp_path / "copy" / "m.jsonl")
    assert [p.name for p in out.parent.iterdir()] == ["m.jsonl"]  # no temp file left
    assert [json.loads(x) for x in out.read_text().splitlines()] == [
        json.loads(x) for x in demo.read_text().splitlines()
    ]


def test_bad_bytes_are_counted_problems_never_a_traceback(demo, bomb_png, capsys):
    """Invalid UTF-8 in a line and a decompression-bomb PNG are problems of their records."""
    root = demo.parent
    (root / "bomb.png").write_bytes(bomb_png)
    good = _good(demo)
    bomb = {**good, "id": "bomb", "image": "bomb.png"}
    raw = demo.read_bytes().splitlines()
    raw.insert(2, b'{"id": "latin-1 caf\xe9", "image": "x.png"}')
    raw.append(json.dumps(bomb).encode())
    demo.write_bytes(b"\n".join(raw) + b"\n")
    scan = scan_manifest(demo, open_images=True)
    found = {p.line: (p.kind, str(p)) for p in scan.problems}
    assert set(found) == {3, 8} and len(scan.records) == 6
    assert found[3][0] == "encoding" and "not valid UTF-8 (byte 0xe9" in found[3][1]
    assert found[8][0] == "unreadable image" and "DecompressionBombError" in found[8][1]
    assert main(["data", "check", str(demo)]) == 1
    out = capsys.readouterr().out
    assert "with problems: 2" in out and "encoding: 1" in out


def test_bad_bytes_in_shards_are_counted_problems(demo, bomb_png, tmp_path, capsys):
    import io
    import tarfile

    from msdiffusion.shards import iter_tar
    from msdiffusion.training.demo import demo_shards

    dataset = demo_shards(demo, tmp_path / "ds", samples_per_shard=3)
    tar_path = dataset / "shards" / "shard-000000.tar"
    samples = list(iter_tar(tar_path))
    samples[0][1]["json"] = b'{"id": "caf\xe9"}'  # not UTF-8
    samples[1][1]["png"] = bomb_png  # the target: a decompression bomb
    with tarfile.open(tar_path, "w") as tar:
        for key, files in samples:
            for member, data in files.items():
                info = tarfile.TarInfo(f"{key}.{member}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert main(["data", "check", str(dataset)]) == 1
    out = capsys.readouterr().out
    assert "with problems: 2" in out and "encoding: 1" in out and "unreadable image: 1" in out
