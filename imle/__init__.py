"""Conditional IMLE super-resolution (SRIM). Filled in by the SRIM issue."""
