"""cnnlab.studies."""
