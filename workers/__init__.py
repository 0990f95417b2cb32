"""sfq's execution side: the worker daemon, data loading, features, training and model files."""
