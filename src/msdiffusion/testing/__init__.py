"""Random-weight models for tests, demos and benchmarks — real architectures built from configs,
offline: the SDXL-shaped component sets (``sdxl``), the data pipeline's models (``data_models``),
the scoring models (``scorers``) and the tokenizers they need (``tokenizers``).
"""
