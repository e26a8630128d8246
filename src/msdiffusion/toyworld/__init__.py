"""The toy world: a small, fully known world in which adapters trained with this package can be
shown to learn identity and layout on a CPU (docs/learning.md).

- ``world``: subjects, scenes, references, rendering — deterministic from a seed;
- ``base``: the SDXL-shaped base model trained on the world (a tool for the proof).
"""
