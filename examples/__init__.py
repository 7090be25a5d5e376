"""Example contracts and the model code they name (``CONF=examples/NAME.json make demo``)."""
