"""Benchmarks (DESIGN.md §7): each seeds its own data, measures the project against a baseline in the
same run, and ends by printing one JSON line. Run them with ``make bench`` or ``make bench-<name>``."""
