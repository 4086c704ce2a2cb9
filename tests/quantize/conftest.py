from quant_helpers import fp_package, table_of  # noqa: F401  (shared fixtures)
