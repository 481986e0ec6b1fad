"""onoff-bench: the CLI, the one training harness, the compute meter and the results store."""
