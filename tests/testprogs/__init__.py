"""Node programs used only by the tests (run as `--algorithm testprogs.<module>` with tests/ on PYTHONPATH)."""
