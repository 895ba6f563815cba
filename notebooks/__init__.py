"""synchlib's notebooks, installed with the package as ``synchlib.notebooks`` (see ``synchlib.reports``)."""
