"""fib_assets: a Dagster code location for FIB-SEM volume curation."""
