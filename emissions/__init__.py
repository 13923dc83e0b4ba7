"""The ``emissions`` command: one entry point for every tool of the project (``emissions.cli``)."""
