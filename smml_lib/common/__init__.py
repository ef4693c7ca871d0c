"""common: the plumbing every other package uses (paths, notebook display, plots, secrets)."""
