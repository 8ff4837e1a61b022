"""kubeling: the face of the toolkit -- the `kubeling` command and the lab."""

__version__ = "0.1.0"
