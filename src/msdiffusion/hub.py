"""Where a model's files are: a local folder, or a repository of the model hub (and its local
cache) — found the way diffusers finds them (``subfolder``, ``revision``, ``local_files_only``,
``cache_dir``, ``token``), with the command that downloads what is missing, and whether the hub
can be reached at all (offline-first: no retries against a network that is not there).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import CheckpointError, ModelNotAvailableError

__all__ = [
    "HubOptions",
    "is_local",
    "hub_offline",
    "hub_reachable",
    "download_command",
    "cached_file",
    "fetch_file",
    "file_exists",
]


@dataclass(frozen=True)
class HubOptions:
    """How to look a repository up, as diffusers' ``from_pretrained`` takes it."""

    subfolder: str | None = None
    revision: str | None = None
    local_files_only: bool | None = None  # None: only when offline
    cache_dir: str | os.PathLike[str] | None = None
    token: str | bool | None = None

    @classmethod
    def pop_from(cls, kwargs: dict[str, Any]) -> HubOptions:
        """Take the hub keywords out of ``kwargs`` (the rest is left there)."""
        return cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in cls.__dataclass_fields__})

    def path_in_repo(self, filename: str) -> str:
        return f"{self.subfolder.strip('/')}/{filename}" if self.subfolder else filename

    def download_kwargs(self) -> dict[str, Any]:
        return {
            "subfolder": self.subfolder or None,
            "revision": self.revision,
            "cache_dir": self.cache_dir,
            "token": self.token,
            "local_files_only": bool(self.local_files_only) or hub_offline(),
        }


def is_local(source: str | os.PathLike[str]) -> bool:
    """True for something on disk, or that can only mean a path (absolute, ``./``, ``~``)."""
    text = os.fspath(source)
    return os.path.exists(text) or text.startswith((".", "/", "~")) or os.path.isabs(text)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` is set."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@lru_cache(maxsize=4)
def _reachable(endpoint: str, timeout: float) -> bool:
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's endpoint accepts a connection (False when offline; asked once)."""
    from huggingface_hub import constants

    return not hub_offline() and _reachable(constants.ENDPOINT, timeout)


def download_command(
    repo: str, options: HubOptions | None = None, filename: str | None = None
) -> str:
    """The ``hf download`` command line that fetches ``filename`` (or the subfolder, or the whole
    repository) into the hub cache."""
    options = options or HubOptions()
    parts = ["hf", "download", repo]
    if filename is not None:
        parts.append(options.path_in_repo(filename))
    elif options.subfolder:
        parts.append(f"--include '{options.subfolder.strip('/')}/*'")
    if options.revision:
        parts.append(f"--revision {options.revision}")
    return " ".join(parts)


def cached_file(repo: str, filename: str, options: HubOptions | None = None) -> Path | None:
    """The file's path in the local hub cache, or None when it has not been downloaded."""
    from huggingface_hub import try_to_load_from_cache

    options = options or HubOptions()
    try:
        found = try_to_load_from_cache(
            repo,
            options.path_in_repo(filename),
            cache_dir=options.cache_dir,
            revision=options.revision,
        )
    except ValueError:  # not a valid repository id
        return None
    return Path(found) if isinstance(found, str) else None


def _not_available(what: str, repo: str, why: str, fix: str) -> ModelNotAvailableError:
    return ModelNotAvailableError(f"cannot load the {what} from {repo!r} ({why}); {fix}")


def fetch_file(
    source: str | os.PathLike[str], filename: str, options: HubOptions, *, what: str
) -> Path:
    """``filename`` of a local folder or a hub repository (downloaded unless offline or
    ``local_files_only``). Missing → ``ModelNotAvailableError`` with the command that fetches it."""
    if is_local(source):
        path = Path(os.path.expanduser(os.fspath(source)))
        path = path / options.subfolder if options.subfolder else path
        path = path if path.is_file() else path / filename
        if not path.is_file():
            raise CheckpointError(f"no {what} file at {path}")
        return path
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = os.fspath(source)
    fix = f"download it with `{download_command(repo, options, filename)}`"
    try:
        return Path(hf_hub_download(repo, filename, **options.download_kwargs()))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = (
            "offline (HF_HUB_OFFLINE=1) and not in the local cache"
            if hub_offline()
            else "not in the local cache, and the hub cannot be reached"
            if not options.local_files_only
            else "local_files_only, and not in the local cache"
        )
        raise _not_available(what, repo, why, fix) from None
    except GatedRepoError:
        raise _not_available(what, repo, "a gated repository: log in", fix) from None
    except RepositoryNotFoundError:
        raise _not_available(what, repo, "no such repository (or no access)", fix) from None
    except RevisionNotFoundError:
        raise _not_available(what, repo, f"no revision {options.revision!r}", fix) from None
    except EntryNotFoundError:
        where = options.path_in_repo(filename)
        raise _not_available(what, repo, f"the repository has no {where}", fix) from None
    except HFValidationError:
        raise CheckpointError(f"{repo!r} is neither a local path nor a hub repository id") from None


def file_exists(source: str | os.PathLike[str], filename: str, options: HubOptions) -> bool:
    """Whether the folder or repository has ``filename`` (asks the hub only when it can)."""
    if is_local(source):
        base = Path(os.path.expanduser(os.fspath(source)))
        base = base / options.subfolder if options.subfolder else base
        return (base / filename).is_file()
    repo = os.fspath(source)
    if cached_file(repo, filename, options) is not None:
        return True
    if options.local_files_only or not hub_reachable():
        return False
    import httpx2
    from huggingface_hub import file_exists as hub_file_exists
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return hub_file_exists(
            repo, options.path_in_repo(filename), revision=options.revision, token=options.token
        )
    except (OSError, ValueError, HfHubHTTPError, httpx2.HTTPError):  # unreachable or refusing
        return False
