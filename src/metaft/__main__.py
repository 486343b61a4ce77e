"""``python -m metaft [overrides]``: the ``metaft`` command (``metaft.cli``)."""
from metaft.cli import run

if __name__ == "__main__":
    run()
