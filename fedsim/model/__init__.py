"""The classifiers, their weights as NumPy lists and in Flower's records, and the training loops."""
