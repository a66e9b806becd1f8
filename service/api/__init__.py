"""Thin HTTP handlers: decode, call the domain, encode. Errors are mapped in ``errors``."""
