"""Pure domain model: value objects, the task lifecycle, retry policy, failure classes.

No I/O, no clock, no framework: time and ids come in as arguments.
"""
