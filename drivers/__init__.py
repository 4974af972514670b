"""medacq package."""
