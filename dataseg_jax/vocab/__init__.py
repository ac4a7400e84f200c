"""Dataset vocabularies, the union vocabulary, and text embeddings of class names."""
