"""Synthetic post-MALDI microscopy with exact masks and mark ids (training data, demos, tests).

``python -m am.synth dataset DIR --rows R --cols C`` writes a pipeline dataset with ground truth;
``python -m am.synth tiles DIR --count N`` writes training images. In code::

    from am.synth.render import random_style, render
    scene = render(lattice, random_style(rng), width=512, height=512, rng=rng)
"""
