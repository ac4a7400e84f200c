"""Input side on tf.data: format readers, TFDS builders, augmentation, target packing, the mixture."""
