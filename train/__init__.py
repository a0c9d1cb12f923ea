"""`python -m train`: jaxla's training program."""
