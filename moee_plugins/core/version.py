"""The package version, kept in the core so that the core never imports the package root."""

__version__ = "0.1.0"
