"""Entry points: the `distillq` CLI and its commands, terminal rendering, the demo."""
