"""Equivalence verification: original and rewritten modules run side by side
(same weights, same inputs), with tiny Hugging Face configurations."""
