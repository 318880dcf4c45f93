"""napari side of the plugin: reader, writer and sample-data hooks named in napari.yaml, and widgets."""
