"""Modalities: one file per kind of data. Import the classes from here."""

from modalities.audio import AudioModality
from modalities.image import ImageModality
from modalities.nothing import NoInputs
from modalities.pixels import PixelModality
from modalities.rna import NucleotideModality, StructureModality
from modalities.text import TextModality

__all__ = ["AudioModality", "ImageModality", "NoInputs", "NucleotideModality",
           "PixelModality", "StructureModality", "TextModality"]
