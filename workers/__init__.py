"""Nodes: the worker launcher, heartbeats, the dead-node reaper, the local cluster, Redis."""
