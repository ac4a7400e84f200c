"""Architecture only: backbones, pixel decoder, transformer decoder, text classifier, the whole model."""
