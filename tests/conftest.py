"""Shared fixtures: tiny, real, random-weight SDXL components (offline; msdiffusion.testing)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples" / "subjects"


@pytest.fixture(scope="session")
def tiny_factory():
    """Builds independent copies of the tiny components (same weights for the same seed)."""
    from msdiffusion.testing.sdxl import random_components

    return lambda seed=0: random_components("tiny", seed)


@pytest.fixture()
def make_adapter():
    from msdiffusion.models.adapter import MSAdapter
    from msdiffusion.testing.sdxl import adapter_kwargs

    def make(unet, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MSAdapter.for_unet(unet, **adapter_kwargs("tiny"))

    return make


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models gain nothing from intra-op threads; on a shared 2-core machine they only
    contend. Modules opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def fresh_accelerate_state():
    """Each training run builds its own Accelerator; forget the previous one's process-wide
    state. Modules opt in with ``pytest.mark.usefixtures("fresh_accelerate_state")``."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """The shared benchmark data when this checkout has it, else a stand-in tree with the real
    layouts and counts (a user's fresh clone)."""
    if (SHARED_DATA / "msbench").is_dir() and (SHARED_DATA / "dreambench").is_dir():
        return SHARED_DATA
    from msdiffusion.evaluation.standin import write_standin

    return write_standin(tmp_path_factory.mktemp("standin"), benchmarks=("msbench", "dreambench"))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    """A tiny PNG whose header claims 30000 × 30000 pixels: Pillow refuses it as a decompression
    bomb (more than twice ``Image.MAX_IMAGE_PIXELS``) instead of decoding it."""
    import struct
    import zlib

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


CONSOLE = Path(sys.executable).with_name("msdiffusion")


def run_console(
    *args: str, cwd: Path | None = None, umask: int | None = None, env=None, timeout=300
):
    """The installed ``msdiffusion`` console script, as a user runs it (its own process: its
    warnings, exit code and file permissions are the real ones)."""
    import subprocess

    def preexec() -> None:
        if umask is not None:
            os.umask(umask)

    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("PYTHONWARNINGS", None)
    return subprocess.run(
        [str(CONSOLE), *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec,
    )


@pytest.fixture()
def started_build(tmp_path):
    """Starts ``msdiffusion data build`` in a process (and session) of its own, the tests' model
    plug-ins importable, and returns once it has written its first shard (or ended, or
    ``timeout`` passed): ``start(videos, out, config, *flags, timeout=120, env=None) -> Popen``
    (``env``: more environment variables), its
    stderr in ``build.log`` under ``tmp_path``. A process still running at the end is killed."""
    import signal
    import subprocess
    import time

    started: list[subprocess.Popen] = []

    def start(
        videos: Path,
        out: Path,
        config: Path,
        *flags: str,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
            **(env or {}),
        }
        with open(tmp_path / "build.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "msdiffusion.cli",
                    "data",
                    "build",
                    "--videos",
                    str(videos),
                    "--out",
                    str(out),
                    "--config",
                    str(config),
                    *flags,
                    "--no-progress",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        started.append(proc)
        marker = out / "shards" / "shard-000000.json"
        deadline = time.monotonic() + timeout
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` × ``height`` pixels (a decompression bomb for
    Pillow beyond twice ``Image.MAX_IMAGE_PIXELS``); its pixel data is never reached."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="session")
def tiny_lora(tmp_path_factory) -> Path:
    """A LoRA for the tiny UNet (random, non-zero), saved as diffusers writes one."""
    from diffusers import StableDiffusionXLPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from msdiffusion.testing.sdxl import random_components

    unet = random_components("tiny", 0)["unet"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        unet.add_adapter(
            LoraConfig(
                r=4,
                lora_alpha=4,
                init_lora_weights=False,
                target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            )
        )
    folder = tmp_path_factory.mktemp("lora")
    StableDiffusionXLPipeline.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet)
    )
    return folder / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="session")
def tiny_controlnet(tmp_path_factory) -> Path:
    """A ControlNet for the tiny UNet, saved as a folder."""
    from diffusers import ControlNetModel

    from msdiffusion.testing.sdxl import random_components

    unet = random_components("tiny", 0)["unet"]
    folder = tmp_path_factory.mktemp("controlnet") / "controlnet"
    ControlNetModel.from_unet(
        unet, conditioning_embedding_out_channels=(8, 8, 8, 8)
    ).save_pretrained(folder)
    return folder
