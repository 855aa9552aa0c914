"""Fault and abuse tests: real processes, real kills, real disks, real Redis faults."""
