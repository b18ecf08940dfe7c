"""Experiment tracking: what a job logs to the trackers its spec names (``report_to``)."""
