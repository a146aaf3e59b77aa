"""Runtime pieces without HTTP: pipelines, the erasure store, the adapter manager, the scheduler and metrics."""
