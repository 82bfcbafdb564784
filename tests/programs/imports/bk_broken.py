"""A user module that fails while it is imported."""
SETTING = 1
raise ValueError("bk_broken: the configuration file is missing")
