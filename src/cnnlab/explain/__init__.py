"""cnnlab.explain."""
