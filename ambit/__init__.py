"""The front door: the ``ambit`` command. Argument handling and output only."""
