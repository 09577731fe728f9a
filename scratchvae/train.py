"""python -m scratchvae.train: train the seed's face VAE. The job lives in scratchvae/training/
(cli.py parses the flags, loop.py is the recipe); this module keeps the command's old name.
"""

import sys

from scratchvae.training.cli import main
from scratchvae.training.draws import step_noise  # tests and benches draw a step's noise from here

__all__ = ["main", "step_noise"]

if __name__ == "__main__":
    sys.exit(main())
