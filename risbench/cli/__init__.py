"""The `risbench` command line (typer). Each command module adds its commands via `register(app)`; `main`
lists them; `launch` is `risbench train` for torchrun."""
