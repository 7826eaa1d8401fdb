"""The `risbench` command line (typer). Each module in this package adds its commands via `register(app)`."""
