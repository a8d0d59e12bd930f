"""Facts shared by every layer (losses, tasks, trainer, metrics); this module imports nothing."""

#: label value that marks an entry to skip: PyTorch's and transformers' convention
IGNORE_INDEX = -100
