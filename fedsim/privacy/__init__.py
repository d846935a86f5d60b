"""Client-level differential privacy on Flower's DP wrappers and mods, and its ε."""
