"""The shared ground: the error hierarchy, the name registries with plugin lookup, parameter
declarations and atomic output directories. Standard library only; every room imports it."""

__version__ = "0.1.0"
