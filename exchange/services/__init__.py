"""Writes for the trade (DESIGN.md §5.1). Import from the submodules."""
