"""Shared by every service: the config file model, CurveZMQ security and audit, socket binding rules, systemd notify."""
