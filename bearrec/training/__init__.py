"""Training: the Hugging Face Trainer with our objective as its loss and constrained beam search as its validation,
its collators, callbacks and checkpoints."""
