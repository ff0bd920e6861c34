"""Runnable flows (train, eval), each a sequence of named steps over the library."""
