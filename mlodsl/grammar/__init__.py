"""The .mlo grammar (``mlo.lark``), shipped as package data."""
