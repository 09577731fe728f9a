"""python -m scratchvae.attributes: attribute vectors of a checkpoint from CelebA's labels.

The command's body is scratchvae/latent/attributes.py; this module is its entry point.
"""

import sys

from scratchvae.latent.attributes import main

if __name__ == "__main__":
    sys.exit(main())
