"""The training core shared by every execution path."""
