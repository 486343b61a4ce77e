"""``python train.py [--config-name train|eval|finetune] [overrides]`` in a checkout: the same command as
the installed ``metaft`` console script (``metaft.cli``), kept so the README's commands work unchanged."""
from metaft.cli import run

if __name__ == "__main__":
    run()
