"""``python -m ingest``: the same as the ``ingest`` command."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="ingest")
