"""The teacher stage: a local model scoring or generating, or a served one behind an endpoint."""
