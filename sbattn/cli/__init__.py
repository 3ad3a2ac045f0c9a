"""The `sbattn` command line: one subcommand per module here, each parsing options and calling the library."""
from .main import build_parser, main

__all__ = ["build_parser", "main"]
