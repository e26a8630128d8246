"""Evaluation on MS-Bench, DreamBench and the toy benchmark (``msdiffusion eval``;
docs/evaluation.md).

- ``protocols``: named settings the numbers depend on (``paper``, ``dreambench``, ``mip-adapter``,
  ``toy``) and the paper's reported numbers
- ``runs``: run folders, index files, completeness checks, sharding, a run resolved against its
  benchmark (the benchmarks themselves are ``msdiffusion.benchmarks``)
- ``generate``: resumable, deterministic, sharded generation through ``msdiffusion.inference``
- ``features``: CLIP / DINO / OWLv2 extractors (identity, preprocessing), reference-feature cache
- ``metrics``: cosines, detection matching, M-DINO products, conventions
- ``scoring``: per-image metrics of a run (ours or bring-your-own images); ``toy``: the toy
  benchmark's exact pixel metrics
- ``stats``: bootstrap intervals over samples, paired tests; ``breakdowns``: overall (weighted
  like the benchmark), per group, subject count, category, subject, worst samples
- ``catalog``, ``report``, ``markdown``, ``drawing``: report.json/md, sample grids (the bar
  charts are ``msdiffusion.charts``)
- ``compare``: runs side by side, differences with intervals, the paper's reference row
- ``standin``: placeholder data for offline trials and tests (the tiny random scorers are
  ``msdiffusion.testing.scorers``)

Submodules are imported on use, so ``import msdiffusion.evaluation`` stays cheap.
"""
