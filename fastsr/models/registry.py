"""The generator and discriminator registries; each architecture file registers itself into one.

What the rest of fastsr asks of an architecture without building it are class attributes, which the
registry checks each class declares: a generator's `scales` (the upscaling factors it can be built for, a
tuple of ints) and `trainable` (False for bicubic, which has nothing to train); a discriminator's
`min_size` (the smallest input side it takes). A generator is built as `cls(config, scale=...)`, a
discriminator as `cls(config)` (see `fastsr.registry`).
"""

from fastsr.registry import Registry

GENERATORS = Registry("generator", built_with=("scale",), requires={"scales": tuple, "trainable": bool})
DISCRIMINATORS = Registry("discriminator", requires={"min_size": int})
