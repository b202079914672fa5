"""Reports of a run: scikit-learn metrics and matplotlib plots."""
