"""python -m scratchvae.prior: a Gaussian mixture fitted to the codes of a run's training images.

The command's body is scratchvae/latent/prior.py; this module is its entry point.
"""

import sys

from scratchvae.latent.prior import main

if __name__ == "__main__":
    sys.exit(main())
