"""The `pycvmfs` command: parse arguments, call library functions, print results."""
