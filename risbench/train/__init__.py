"""One training run: config, components, the loop, evaluation, losses and metrics (`LOSSES`, `METRICS`)."""
