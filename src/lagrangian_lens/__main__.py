"""``python -m lagrangian_lens`` is the ``lagrangian-lens`` command."""
import sys

from .cli import main

sys.exit(main())
