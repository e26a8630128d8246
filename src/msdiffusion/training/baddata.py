"""Bad records: skipped, counted, the first few logged — and the run stops when too many are bad.

Two checks share one threshold (``bad_data.max_skip_fraction``): before training, the share of
manifest records that fail the static checks (schema, boxes, phrases, missing files); during
training, the share of records that fail at load time (corrupt image, box emptied by the crop),
judged once ``bad_data.min_samples`` records have been drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from ..errors import MSDiffusionError
from .config import BadDataConfig

__all__ = ["TooMuchBadData", "SkipLog"]

logger = logging.getLogger("msdiffusion.training")


class TooMuchBadData(MSDiffusionError):
    """More records were skipped than ``bad_data.max_skip_fraction`` allows."""


class SkipLog:
    """Counts skipped records and logs the first ``log_first`` reasons."""

    def __init__(self, config: BadDataConfig, *, enabled_logging: bool = True):
        self.config = config
        self.logged = 0
        self.enabled_logging = enabled_logging

    def report(self, items: Iterable[tuple[str | None, str]], where: str) -> None:
        for record_id, reason in items:
            if self.enabled_logging and self.logged < self.config.log_first:
                logger.warning("skipped record %s (%s): %s", record_id, where, reason)
                self.logged += 1

    def check(self, skipped: int, total: int, where: str, *, runtime: bool) -> None:
        """Raise TooMuchBadData when ``skipped / total`` passes the threshold."""
        if total <= 0 or (runtime and total < self.config.min_samples):
            return
        share = skipped / total
        if share > self.config.max_skip_fraction:
            raise TooMuchBadData(
                f"{where}: {skipped} of {total} records skipped ({share:.1%}), more than "
                f"bad_data.max_skip_fraction = {self.config.max_skip_fraction:.1%}; run "
                "`msdiffusion data check` on the manifest, or raise the threshold"
            )
