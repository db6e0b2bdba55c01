"""am-segm: segment ablation marks in post-MALDI microscopy and number them by acquisition grid.

The package never configures logging; command-line entry points do.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
