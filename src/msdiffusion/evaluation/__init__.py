"""Evaluation on MS-Bench and DreamBench (``msdiffusion eval``; docs/evaluation.md).

- ``benchmarks``: the benchmarks as data (exact enumeration, missing references counted)
- ``runs``: run folders, index files, atomic writes, completeness checks, sharding
- ``generate``: resumable, deterministic, sharded generation through ``msdiffusion.inference``
- ``features``: CLIP / DINO / OWLv2 extractors and the reference-feature cache
- ``metrics``: cosines, box crops, IoU, detection matching, M-DINO, summaries
- ``scoring``: per-image metrics of a run (ours or bring-your-own images)
- ``report``, ``drawing``: report.json/md, bar charts, sample grids, comparisons
- ``standin``, ``tiny``: placeholder data and tiny random scorers for offline trials and tests

Submodules are imported on use, so ``import msdiffusion.evaluation`` stays cheap.
"""
