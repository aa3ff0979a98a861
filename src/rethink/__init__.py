"""Reference reproduction pipeline for Zhang et al. (ICLR 2017).

Importing the package is cheap on purpose: the Snakefile imports it at parse time, and that
parse happens again inside every cluster job, so nothing here may import torch.
"""

__version__ = "0.1.0"
