"""metaft: meta-learning followed by supervised fine-tuning."""

__version__ = "0.1.0"
