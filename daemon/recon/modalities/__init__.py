"""Modality bindings: one :class:`~medacq.daemon.recon.base.Reconstructor` per modality, turning stream frames into calls of :mod:`medacq.daemon.recon.algorithms`."""
