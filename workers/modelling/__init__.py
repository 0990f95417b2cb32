"""Pure computation on bars, never touching the database (tests/test_layers.py checks its imports): the
registries (algorithms, features, regimes, CV splitters, backtest strategies), training and scoring, the
backtest engine, model files, and `contract`, which exports the registries as the database's contract
(`python -m workers.modelling.contract > sql/registry.sql`). The same code runs in the worker's training
process, in tests and in benchmarks.
"""
