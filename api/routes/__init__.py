"""HTTP routes, one module per resource; each is thin over a `pgrag` function."""
