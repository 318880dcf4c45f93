"""Training, inference and evaluation. No Qt, no napari: the CLI, the Python API and the widgets
all drive this package."""
