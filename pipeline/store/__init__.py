"""The pipeline's database layer: tables, connections, queries and bulk I/O, a concern a module."""
