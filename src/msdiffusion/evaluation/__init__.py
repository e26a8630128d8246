"""Evaluation on MS-Bench and DreamBench (``msdiffusion eval``; docs/evaluation.md).

- ``runs``: run folders, index files, completeness checks, sharding, a run resolved against its
  benchmark (the benchmarks themselves are ``msdiffusion.benchmarks``)
- ``generate``: resumable, deterministic, sharded generation through ``msdiffusion.inference``
- ``features``: CLIP / DINO / OWLv2 extractors and the reference-feature cache
- ``metrics``: cosines, detection matching, M-DINO products, summaries
- ``scoring``: per-image metrics of a run (ours or bring-your-own images)
- ``report``, ``drawing``: report.json/md, bar charts, sample grids, comparisons
- ``standin``: placeholder data for offline trials and tests (the tiny random scorers are
  ``msdiffusion.testing.scorers``)

Submodules are imported on use, so ``import msdiffusion.evaluation`` stays cheap.
"""
