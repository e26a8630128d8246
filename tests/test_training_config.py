"""Training config: released defaults, JSON file + flags + --set precedence, errors naming keys."""

from __future__ import annotations

import json

import pytest

from msdiffusion.cli import build_parser
from msdiffusion.errors import InputError
from msdiffusion.training.cli import config_from_args
from msdiffusion.training.config import TrainConfig, load_config, parse_override


def test_defaults_are_the_released_recipe():
    c = TrainConfig().validate()
    assert (c.optim.learning_rate, c.optim.weight_decay, c.optim.max_grad_norm) == (1e-4, 0.01, 1.0)
    assert c.optim.lr_scheduler == "constant"
    assert (c.dropout.image, c.dropout.text, c.dropout.both, c.dropout.grounding) == (
        0.05,
        0.05,
        0.05,
        0.1,
    )
    assert c.batch_size == 8 and c.data.resolution == 512 and c.data.crop == "center"
    assert c.data.reference_interpolation == "bilinear"
    assert c.data.max_subjects == 4  # the released training's subjects per record
    assert c.checkpoint.signal_exit_code == 0 and not c.allow_inexact_resume


def test_file_then_flags_then_set(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(
        json.dumps(
            {
                "max_steps": 10,
                "optim": {"learning_rate": 3e-4},
                "data": {"manifest": "a.jsonl", "resolution": [64, 96]},
            }
        )
    )
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            str(path),
            "--max-steps",
            "20",
            "--set",
            "max_steps=30",
            "--set",
            "data.crop=random",
            "--ema",
        ]
    )
    c = config_from_args(args)
    assert c.max_steps == 30  # --set beats the flag, which beats the file
    assert c.optim.learning_rate == 3e-4 and c.data.size == (64, 96)
    assert c.data.crop == "random" and c.ema.enabled
    assert c.data.manifest == "a.jsonl"
    # the same flags work on `train cache`
    args = build_parser().parse_args(["train", "cache", "--config", str(path), "--cache-dir", "c"])
    assert config_from_args(args).data.cache_dir == "c"


@pytest.mark.parametrize(
    "overrides, key",
    [
        ({"optim.lr": 1}, "optim.lr"),
        ({"batch_size": "8"}, "batch_size"),
        ({"dropout.image": 1.5}, "dropout.image"),
        ({"data.resolution": 100}, "data.resolution"),
        ({"data.cache_dir": "c", "data.crop": "random"}, "data.crop"),
        ({"model.preset": "sd15"}, "model.preset"),
        ({"validation.every": 5}, "validation.requests"),
        ({"optim.lr_scheduler": "nope"}, "optim.lr_scheduler"),
        ({"checkpoint.signal_exit_code": 256}, "checkpoint.signal_exit_code"),
        ({"data.shuffle_buffer": 0}, "data.shuffle_buffer"),
    ],
)
def test_errors_name_the_key(overrides, key):
    with pytest.raises(InputError) as err:
        load_config(None, overrides)
    assert err.value.argument == key


def test_bad_file_and_override_syntax(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        load_config(tmp_path / "bad.json")
    with pytest.raises(InputError):
        parse_override("no-equals-sign")
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a=hello") == ("a", "hello")


def test_round_trip_through_json():
    c = load_config(
        None,
        {
            "model.preset": "tiny",
            "validation.every": 2,
            "validation.requests": [{"prompt": "a dog"}],
        },
    )
    again = TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))).validate()
    assert again == c


def test_resume_flags():
    args = build_parser().parse_args(["train", "--resume", "latest", "--allow-inexact-resume"])
    config = config_from_args(args)
    assert config.resume == "latest" and config.allow_inexact_resume
