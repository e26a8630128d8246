"""`train`, `eval`, `data`, `convert` and `--help` as a user runs them (the installed console
script): a run folder is never mixed or lost and is as readable as the umask says, cheap checks
come before any model, a failure is one line and leaves nothing behind, log lines stay off the
progress bars, every flag says its default."""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import time

import pytest
from conftest import CONSOLE, REPO, run_console
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


def test_train_never_mixes_two_runs_in_one_folder_and_writes_as_the_umask_says(manifest, tmp_path):
    out = tmp_path / "run"
    first = run_console(
        *TRAIN, "--manifest", str(manifest), "--max-steps", "2", "--out", str(out), umask=0o002
    )
    ok(first)
    assert _checkpoints(out) == ["step-00000001", "step-00000002"]
    # every file of the run, the exported adapter's weights included, as the umask says
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    assert "adapter/adapter.safetensors" in modes
    wrong = {k: oct(v) for k, v in modes.items() if v != (0o775 if (out / k).is_dir() else 0o664)}
    assert not wrong, wrong
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
    # the released model is not here: a check made after loading it would say so instead
    unavailable = [("sdxl" if arg == "tiny" else arg) for arg in TRAIN]
    (tmp_path / "junk.jsonl").write_text('not json\n{"also": "not a record"}\n')
    (tmp_path / "folder.jsonl").mkdir()
    for manifest, needles in (
        (tmp_path / "none.jsonl", ["--manifest", "file does not exist"]),
        (tmp_path / "folder.jsonl", ["--manifest", "is a folder"]),
        (tmp_path / "junk.jsonl", ["--manifest", "no parsable record", "line 1"]),
    ):
        result = run_console(
            *unavailable, "--manifest", str(manifest), "--out", str(tmp_path / "o")
        )
        refused(result, *needles)
    refused(run_console(*unavailable, "--out", str(tmp_path / "o")), "--manifest", "is required")
    refused(
        run_console(
            "train",
            "cache",
            "--preset",
            "sdxl",
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


def test_convert_without_the_unet_config_says_so_in_one_line(tmp_path):
    """The UNet config is read by hub id (a library call that warns of a deprecated argument):
    not cached and offline, one line, no library note, nothing written."""
    (tmp_path / "ms_adapter.bin").write_bytes(b"junk")
    out = tmp_path / "converted"
    err = refused(
        run_console(
            "convert",
            str(tmp_path / "ms_adapter.bin"),
            str(out),
            "--unet",
            "msdiffusion-tests/not-downloaded",
        ),
        "cannot read a UNet config",
        "msdiffusion-tests/not-downloaded",
    )
    assert "local_dir_use_symlinks" not in err
    assert not out.exists()


def _in_a_terminal(*args: str, timeout: float = 300) -> tuple[int, str]:
    """The console script run with a terminal (100 columns) as its stdin, stdout and stderr:
    its exit code and everything the terminal received."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.Popen(
        [str(CONSOLE), *args], stdin=child, stdout=child, stderr=child, env=env, close_fds=True
    )
    os.close(child)
    received, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([parent], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(parent, 65536)
            except OSError:  # the terminal closed: the command has ended
                break
            if not chunk:
                break
            received.append(chunk)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(parent)
    return code, b"".join(received).decode(errors="replace")


def test_data_demo_shows_its_progress_in_a_terminal_and_prints_below_the_bar(tmp_path):
    code, shown = _in_a_terminal(
        "data", "demo", "--out", str(tmp_path), "--videos", "1", "--engine", "local"
    )
    assert code == 0, shown[-2000:]
    assert "building:   0%" in shown and "building: 100%" in shown, shown[-2000:]
    # what stays on screen (the terminal ends its lines with \r\n; a bar redraws after a \r)
    lines = [line.split("\r")[-1] for line in shown.replace("\r\n", "\n").split("\n")]
    assert any(line.startswith("wrote ") for line in lines), shown[-2000:]
    glued = [line for line in lines if re.search(r"\d+/\d+ \[[^\]]*\]\s*\S", line)]
    assert not glued, glued


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


def test_the_console_help_describes_each_command_and_keeps_to_its_flags():
    wide = {"COLUMNS": "2000"}  # one line per flag
    standin = ok(run_console("eval", "standin", "--help", env=wide)).splitlines()
    assert standin[2].startswith("Write placeholder"), standin[:4]  # a description
    cache = ok(run_console("train", "cache", "--help", env=wide))
    assert "--cache-dir" in cache and "--init-adapter" not in cache and "--max-steps" not in cache
    generate = ok(run_console("generate", "--help", env=wide))
    for flag in ("--box", "--seed", "--batch-size", "--negative-prompt"):
        # the flag's entry: its line, and the next when the help starts below the name
        [entry] = re.findall(rf"^  {flag} .*\n(?:   .*\n)?", generate, re.MULTILINE)
        assert "(default:" in entry, entry


def test_make_clean_keeps_the_users_results():
    dry = subprocess.run(["make", "-n", "clean"], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0 and ".venv" in dry.stdout
    assert "outputs" not in dry.stdout
