"""The reconstruction stage (``stage``), the reconstructor interface (``base``) and registry; ``algorithms/`` pure, ``modalities/`` their bindings."""
