"""The benchmark suite: ``python -m bench [NAME...] [--quick] [--out FILE]``.

Each benchmark measures ingest side by side with the limit of its own stack (a bare walk,
a bare HTTP loop, the sqlite3 tool) in the same run; see the README's Performance section.
"""
