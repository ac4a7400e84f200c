"""Per-task post-processing, metrics, and writers of standard prediction files."""
