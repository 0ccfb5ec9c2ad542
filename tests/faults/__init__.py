"""Faults on real processes: killed or frozen workers, outages, a full disk, time limits."""
