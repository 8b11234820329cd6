"""``python -m pyro_flowvae`` runs the CLI."""

import sys

from pyro_flowvae.cli import main

sys.exit(main())
