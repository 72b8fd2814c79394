"""The feature file: its schema, crash-safe journal, writer, merge, reader and interop."""
