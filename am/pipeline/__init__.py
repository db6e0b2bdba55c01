"""``python -m am.pipeline``: the user's command (see ``__main__``)."""
