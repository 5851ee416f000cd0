"""Modalities: one file per kind of data. Import the classes from here."""

from modalities.image import ImageModality
from modalities.text import TextModality

__all__ = ["ImageModality", "TextModality"]
