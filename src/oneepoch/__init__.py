"""oneepoch: train language models one epoch at a time, sized for the budget."""

__version__ = "0.1.0"
