"""Models the benchmark searches, saves and backfills."""
