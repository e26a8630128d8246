"""`train`, `eval`, `data` and `--help` as a user runs them (the installed console script): a
run folder is never mixed or lost, cheap checks come before any model, a failure is one line and
leaves nothing behind, log lines stay off the progress bars, every flag says its default."""

from __future__ import annotations

import argparse
import json
import re
import subprocess

import pytest
from conftest import REPO, run_console
from test_faces_generate import NOISE, ok, refused

from msdiffusion.training.demo import build_demo_manifest

EXAMPLES = REPO / "examples" / "subjects"
TRAIN = [
    "train",
    "--preset",
    "tiny",
    "--cpu",
    "--resolution",
    "64",
    "--batch-size",
    "1",
    "--num-workers",
    "0",
    "--report-to",
    "none",
    "--checkpoint-every",
    "1",
    "--set",
    "logging.every=1",
]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return build_demo_manifest(tmp_path_factory.mktemp("demo"), EXAMPLES, num_records=4)


def _checkpoints(out):
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_train_never_mixes_two_runs_in_one_folder(manifest, tmp_path):
    out = tmp_path / "run"
    first = run_console(*TRAIN, "--manifest", str(manifest), "--max-steps", "2", "--out", str(out))
    ok(first)
    assert _checkpoints(out) == ["step-00000001", "step-00000002"]
    # a log line is written above the bar, never glued onto it (what a terminal shows last)
    for line in first.stderr.split("\n"):
        shown = line.split("\r")[-1]
        assert not re.search(r"\d+/\d+ \[[^\]]*\].*(INFO|WARNING)", shown), line
    # a fresh run into it: refused, the old run untouched
    refused(
        run_console(*TRAIN, "--manifest", str(manifest), "--max-steps", "1", "--out", str(out)),
        "--out",
        "step 2",
        "--resume latest",
        "--overwrite",
    )
    refused(
        run_console(
            *TRAIN,
            "--manifest",
            str(manifest),
            "--out",
            str(out),
            "--resume",
            "latest",
            "--overwrite",
        ),
        "--overwrite",
    )
    assert _checkpoints(out) == ["step-00000001", "step-00000002"]
    # --overwrite starts over: nothing of the old run is left for --resume latest to pick
    ok(
        run_console(
            *TRAIN,
            "--manifest",
            str(manifest),
            "--max-steps",
            "1",
            "--out",
            str(out),
            "--overwrite",
        )
    )
    assert _checkpoints(out) == ["step-00000001"]
    assert json.loads((out / "config.json").read_text())["max_steps"] == 1


def test_train_checks_its_data_before_any_model_loads(tmp_path):
    (tmp_path / "junk.jsonl").write_text('not json\n{"also": "not a record"}\n')
    (tmp_path / "folder.jsonl").mkdir()
    for manifest, needles in (
        (tmp_path / "none.jsonl", ["--manifest", "file does not exist"]),
        (tmp_path / "folder.jsonl", ["--manifest", "is a folder"]),
        (tmp_path / "junk.jsonl", ["--manifest", "no parsable record", "line 1"]),
    ):
        result = run_console(*TRAIN, "--manifest", str(manifest), "--out", str(tmp_path / "o"))
        refused(result, *needles)
    refused(run_console(*TRAIN, "--out", str(tmp_path / "o")), "--manifest", "is required")
    refused(
        run_console(
            "train",
            "cache",
            "--preset",
            "tiny",
            "--cache-dir",
            str(tmp_path / "c"),
            "--manifest",
            str(tmp_path / "junk.jsonl"),
        ),
        "no parsable record",
    )
    assert not (tmp_path / "o").exists() and not (tmp_path / "c").exists()


def test_eval_generate_that_fails_writes_no_run(data_root, tmp_path):
    out = tmp_path / "run"
    result = run_console(
        "eval",
        "generate",
        "msbench",
        "--data",
        str(data_root),
        "--out",
        str(out),
        "--preset",
        "sdxl",
        "--limit",
        "1",
        "--images-per-sample",
        "1",
        "--dtype",
        "float16",
        "--guidance",
        "5",
    )  # old spellings and long dtype names are still understood
    refused(result, "missing", "hf download")
    assert not out.exists()  # no run.json, no index.jsonl
    (tmp_path / "file").write_text("x")
    refused(
        run_console(
            "eval", "generate", "msbench", "--data", str(data_root), "--out", str(tmp_path / "file")
        ),
        "--out",
        "is a file",
    )


def test_data_build_with_a_model_that_is_not_there_stops_before_writing(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "dog.png").write_bytes((EXAMPLES / "dog.png").read_bytes())
    out = tmp_path / "dataset"
    refused(
        run_console("data", "build", "--images", str(tmp_path / "photos"), "--out", str(out)),
        "cannot load the captioner model",
        "config.models.captioner.path",
    )
    assert not out.exists()  # no build.json, no inputs.json


def _leaf_parsers(parser: argparse.ArgumentParser, name: str = "msdiffusion"):
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs or parser.get_default("func") is not None:
        yield name, parser
    for action in subs:
        for child_name, child in action.choices.items():
            yield from _leaf_parsers(child, f"{name} {child_name}")


def test_every_flag_of_every_command_has_a_line_and_a_default_and_every_command_an_example():
    from msdiffusion.cli import build_parser

    commands = dict(_leaf_parsers(build_parser()))
    assert {"msdiffusion generate", "msdiffusion train", "msdiffusion train cache"} <= set(commands)
    assert {"msdiffusion eval generate", "msdiffusion data build", "msdiffusion ui"} <= set(
        commands
    )
    missing = []
    for name, parser in commands.items():
        if "example" not in (parser.epilog or "") and name != "msdiffusion":
            missing.append(f"{name}: no example")
        if not parser.description:
            missing.append(f"{name}: no description")
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            if isinstance(action, argparse._SubParsersAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if not text:
                missing.append(f"{name} {action.dest}: no help")
            elif action.option_strings and "default" not in text and "required" not in text:
                missing.append(f"{name} {action.option_strings[0]}: no default in {text!r}")
    assert not missing, "\n".join(missing)
    # one vocabulary: the shared flags keep their names and old spellings in every command
    generate = commands["msdiffusion generate"].format_help()
    evaluation = commands["msdiffusion eval generate"].format_help()
    for text in (generate, evaluation):
        assert "--guidance-scale X, --guidance X" in text and "--num-images N" in text
    assert "--num-images N, --images-per-sample N" in evaluation
    assert "--out DIR, --output-dir DIR" in commands["msdiffusion train"].format_help()
    assert "--init-adapter" not in commands["msdiffusion train cache"].format_help()


def test_the_help_runs_fast_and_quiet():
    result = run_console("--help")
    ok(result)
    assert not NOISE.search(result.stdout)


def test_make_clean_keeps_the_users_results():
    dry = subprocess.run(["make", "-n", "clean"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0 and ".venv" in dry.stdout
    assert "outputs" not in dry.stdout
