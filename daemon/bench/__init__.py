"""Every ``medacq bench NAME`` benchmark (``runner`` dispatches). Only the CLI imports this package."""
