"""The command worker: applies commands exactly once to the write store, projects views."""
