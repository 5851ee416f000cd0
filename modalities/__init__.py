"""Modalities: one file per kind of data. Import the classes from here."""

from modalities.text import TextModality

__all__ = ["TextModality"]
