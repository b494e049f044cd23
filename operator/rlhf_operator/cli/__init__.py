"""`rlhfctl`: the command-line interface (one module per subcommand)."""
