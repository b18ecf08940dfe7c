"""Teacher and student of different tokenizers: the same text, two token sequences."""
