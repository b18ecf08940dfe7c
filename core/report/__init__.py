"""The job's report: figures and tables, its markdown, and a cache shard shown in text."""
