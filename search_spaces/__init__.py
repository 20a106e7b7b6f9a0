"""The bundled search spaces, one ``<method>.yaml`` per method (package data, read through importlib.resources)."""
