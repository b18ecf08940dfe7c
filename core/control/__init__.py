"""A running job seen from outside: pause and cancel, placement on nodes, status."""
