"""The generator and discriminator registries; each architecture file registers itself into one.

What the rest of fastsr asks of an architecture without building it are class attributes: a generator's
`scales` (the upscaling factors it can be built for) and `trainable` (False for bicubic, which has nothing to
train); a discriminator's `min_size` (the smallest input side it takes).
"""

from fastsr.registry import Registry

GENERATORS = Registry("generator")
DISCRIMINATORS = Registry("discriminator")
