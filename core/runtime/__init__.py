"""Process and cluster state that knows no job: settings, the broker, nodes, live progress."""
