import sys

from cxrtrek_jax.cli import main

sys.exit(main())
