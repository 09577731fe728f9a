"""The latent space: seeded draws and code arithmetic (arithmetic.py), CelebA's labels (labels.py),
attribute vectors (vectors.py), the fitted prior's mixture (mixture.py), and the bodies of the two
commands that make those files (attributes.py, prior.py).

`from scratchvae import latent; latent.draw_z(...)` reaches arithmetic.py's names through this face.
"""

from scratchvae.latent.arithmetic import (GOLDEN, MASK64, attribute_rows, combine, draw_z,  # noqa: F401
                                          expression_text, fix_negative_values, lerp, name_key, parse_expression,
                                          parse_strengths, slerp, splitmix64, standard_normals)
