"""Stage 3, library: the index of embedded windows, ranking, search, and evaluation against labels."""
