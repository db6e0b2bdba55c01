"""Registration: number every ablation mark by its acquisition grid position (row, col).

The id of the mark at (row, col) is ``row * cols + col + 1``; row 0 is the top, col 0 the left of
the grid as imaged. Three entry points, from pixels to files::

    reg = register_mask(mask, rows=100, cols=100)        # mask: 2-D 0/255 array
    write_outputs(out_dir, reg, source=grey8)            # am_coordinates.png/.csv, overlay.png, registration.json
    reg = register_group(dataset, "g1", rows=100, cols=100)   # reads and writes the dataset layout

``python -m am.register DATASET [GROUP ...] --rows R --cols C`` runs the last one per group.
"""

from am.lazy import lazy_exports

TYPE_CHECKING = False
if TYPE_CHECKING:
    from am.register.dataset import register_group
    from am.register.outputs import write_outputs
    from am.register.registration import TABLE_DTYPE, Registration, register_mask

# Each name loads with its module on first use, not with the package: see am.lazy.
_EXPORTS = {
    "register_group": "am.register.dataset",
    "write_outputs": "am.register.outputs",
    "TABLE_DTYPE": "am.register.registration",
    "Registration": "am.register.registration",
    "register_mask": "am.register.registration",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = ["TABLE_DTYPE", "Registration", "register_group", "register_mask", "write_outputs"]
