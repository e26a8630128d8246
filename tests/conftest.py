"""Shared fixtures: tiny, real, random-weight SDXL components (offline; msdiffusion.testing)."""

from __future__ import annotations

import os
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
