"""A fake AsymSegTrainer for the module's process tests (see __main__.py). Not the engine."""
