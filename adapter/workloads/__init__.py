"""Workloads shipped in the adapter bundle and run as separate processes by `command` task types."""
