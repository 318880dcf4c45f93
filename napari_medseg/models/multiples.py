"""The spatial multiple each network's input sizes must be (its downsampling depth): read by the networks'
input checks and by the registry's :class:`~napari_medseg.models.registry.ModelInfo`, so that neither
imports the other (no import circle) and the number lives in one place."""

MULTIPLES = {"lstmsa": 16, "bilateral": 16, "bcdunet": 8, "hourglass": 64, "unet": 16}
