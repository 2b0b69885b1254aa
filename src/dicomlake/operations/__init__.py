"""Long-running operations: their records, the runner and the work they do."""
