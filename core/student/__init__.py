"""The student stage: build, train on cached targets, merge replicas, evaluate, initialise."""
