"""Benchmarks: the engine against baselines and peers, int8 against the unquantized model.

Every figure comes from these modules and is printed as JSON beside a baseline measured in the same run.
"""
