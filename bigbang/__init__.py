"""bigbang: orchestrate a public IT department's platform swap weekend."""

__version__ = "0.1.0"
