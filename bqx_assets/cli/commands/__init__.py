"""Subcommands of `bqx`: each module has `register(subparsers)` that adds one command."""
