"""Images in: folders, zips and CelebA's layout (sources.py), the decoded-image cache on disk
(cache.py), the one reader of an image file (imagefile.py), the built-in synthetic faces
(synthetic.py) and batches read ahead of the step (prefetch.py).

`from scratchvae import data; data.load_images(...)` reaches sources.py's names through this face.
"""

from scratchvae.data.sources import (CELEBA_DIR, CELEBA_PARTITION, CELEBA_ZIP, CROPS, FORMAT_VERSION,  # noqa: F401
                                     FORMATS, IMAGE_SUFFIXES, MAX_FILE_BYTES, DataError, ImageSet, batch_to_float,
                                     decode_image, default_cache_dir, load_images, split_indices, upright_size,
                                     verify_cache)
