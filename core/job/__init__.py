"""A job's parts before any compute: the spec, the dataset and its sources, models, the job on storage."""
