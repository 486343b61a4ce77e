"""``python -m metaft.study``: see ``metaft.study.driver``."""
import sys

from metaft.study.driver import main

sys.exit(main())
