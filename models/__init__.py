"""Wire schemas and device physics: pure code, no I/O, no HTTP."""
