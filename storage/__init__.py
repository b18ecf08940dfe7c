"""Storage owns every path, Redis key and record: layout, keys, atomic writes, cache, checkpoints."""
