"""Data shipped with the package: the sample corpus of ``moee demo``."""
