"""The `distillq` subcommands, a module per group; each registers its flags beside its handler."""
