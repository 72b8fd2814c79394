"""The papers' evaluations: splits, linear SVMs, ASLAN pairs."""
