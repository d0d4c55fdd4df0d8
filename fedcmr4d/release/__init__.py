"""release subpackage."""
