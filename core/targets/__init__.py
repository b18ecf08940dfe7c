"""Target methods (top-k, sampled): what a teacher keeps per position and how a student weighs it."""
