"""Programs that Dagster launches as external processes through Dagster Pipes (e.g. under torchrun)."""
