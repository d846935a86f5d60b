"""Experiment trackers as run outputs: TensorBoard, MLflow and Weights & Biases, one module each."""
