"""Small data files shipped with the package (see training.data.load_digits for origin and licence)."""
