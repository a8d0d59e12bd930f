"""The ``hf-losses`` command: list and describe losses, write launch configs, plot runs, run the demo and loss comparisons."""
