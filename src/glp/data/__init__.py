"""What goes in: the corpus and labelled data, the source LLM, activation extraction, the activation store and its
normalization statistics."""
